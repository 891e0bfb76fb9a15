package rabbitmq

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// Issue 11, review 2 #2: two processes (two DeadLetters, each with its own
// connection) browsing at once each got part of the queue, with no error
// and no Next. Each must see every dead letter.
func TestRegressionIssue11ConcurrentInstances(t *testing.T) {
	q, _, a := dlFixture(t, Classic)
	b := newDLFor(t, DeadLetterConfig{Queue: q, QueueType: Classic})
	const n = 400
	fillDeadLetters(t, q, n)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	var pa, pb broker.DeadLetterPage
	var ea, eb error
	wg.Add(2)
	go func() { defer wg.Done(); pa, ea = a.List(ctx, broker.DeadLetterQuery{Limit: n}) }()
	go func() {
		defer wg.Done()
		time.Sleep(20 * time.Millisecond)
		pb, eb = b.List(ctx, broker.DeadLetterQuery{Limit: n})
	}()
	wg.Wait()
	if ea != nil || eb != nil {
		t.Fatalf("List errors: %v, %v", ea, eb)
	}
	if len(pa.Items) != n || len(pb.Items) != n {
		t.Fatalf("two Lists at once: A %d, B %d dead letters; want %d each", len(pa.Items), len(pb.Items), n)
	}
}

// Issue 11, review 2 #2: a live consumer on the dead-letter queue takes
// messages in the middle of a browse: a browse refuses to run.
func TestRegressionIssue11ConsumerOnTheDLQ(t *testing.T) {
	q, _, dl := dlFixture(t, Classic)
	fillDeadLetters(t, q, 3)
	ch, err := rawConn(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Qos(1, 0, false); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.Consume(q+".dlq", "", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	page, err := dl.List(ctx, broker.DeadLetterQuery{})
	if !errors.Is(err, ErrDeadLettersBusy) {
		t.Fatalf("List with a consumer on the dead-letter queue = %d items, %v; want an error wrapping ErrDeadLettersBusy", len(page.Items), err)
	}
}

// Issue 11, review 2 #2: while another process holds the lock, an
// operation waits until its ctx ends, then says the dead letters are busy.
func TestRegressionIssue11LockBusy(t *testing.T) {
	q, _, dl := dlFixture(t, Classic)
	fillDeadLetters(t, q, 1)
	ch, err := rawConn(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(q+".dlq"+lockSuffix, false, true, true, false, nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if _, err := dl.List(ctx, broker.DeadLetterQuery{}); !errors.Is(err, ErrDeadLettersBusy) {
		t.Fatalf("List while another connection holds the lock = %v; want ErrDeadLettersBusy", err)
	}
	if _, err := ch.QueueDelete(q+".dlq"+lockSuffix, false, false, false); err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel2()
	if page, err := dl.List(ctx2, broker.DeadLetterQuery{}); err != nil || len(page.Items) != 1 {
		t.Fatalf("List after the lock was freed = %d items, %v; want 1", len(page.Items), err)
	}
}
