package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
)

// TestPublishRefusesShapesAMQP091CannotRead (issue 10, review round 4, R1):
// amqp091's reader refuses a field table or array of more than 8192
// elements, or nested deeper than 32, and closes the connection; a Source
// then loops on such a message forever. The Publisher must refuse it.
func TestPublishRefusesShapesAMQP091CannotRead(t *testing.T) {
	deep := amqp.Table{"leaf": "x"}
	for range 40 {
		deep = amqp.Table{"d": deep}
	}
	arr := make([]any, maxContainerElements+1)
	for i := range arr {
		arr[i] = int8(1)
	}
	nested := amqp.Table{}
	for i := range maxContainerElements + 1 {
		nested[fmt.Sprintf("n%05d", i)] = int8(1)
	}
	top := amqp.Table{}
	for i := range maxContainerElements + 1 {
		top[fmt.Sprintf("h%05d", i)] = "v"
	}
	for name, h := range map[string]amqp.Table{
		"a table nested 41 deep":         {"d": deep},
		"an array of 8193 elements":      {"a": arr},
		"a nested table of 8193 entries": {"t": nested},
		"an array in an array 41 deep":   {"a": nestArray(41)},
		"8193 headers":                   top,
	} {
		t.Run(name, func(t *testing.T) {
			m := amqp.Publishing{Headers: h}
			err := checkPublish("", "q", &m)
			if err == nil && !fits(&m, true, 1<<30) {
				err = tooLarge(&m, true, 1<<30)
			}
			if !errors.Is(err, broker.ErrInvalidConfig) {
				t.Fatalf("checkPublish and fits accept it (err %v); want an error wrapping broker.ErrInvalidConfig", err)
			}
		})
	}
	// What amqp091 reads is accepted.
	ok := amqp.Table{"d": nestTable(30), "a": make([]any, 8000)}
	if err := checkPublish("", "q", &amqp.Publishing{Headers: ok}); err != nil {
		t.Fatalf("checkPublish(readable shapes) = %v; want nil", err)
	}
}

func nestTable(n int) amqp.Table {
	t := amqp.Table{"leaf": "x"}
	for range n - 1 {
		t = amqp.Table{"d": t}
	}
	return t
}

func nestArray(n int) []any {
	a := []any{"x"}
	for range n - 1 {
		a = []any{a}
	}
	return a
}

// TestPublishLeavesHeadroom (issue 10, review round 4, R2): a message
// accepted at the frame size came back unreadable once the broker
// (x-death, x-delivery-count) or a Source's copy (x-queuekit-deliveries,
// x-queuekit-routing-key) added headers. A publish must leave room.
func TestPublishLeavesHeadroom(t *testing.T) {
	const frameMax = 131072
	m := amqp.Publishing{Headers: amqp.Table{"big": ""}}
	m.Headers["big"] = string(make([]byte, frameMax-100-headerFrameSize(&m, true)))
	if n := headerFrameSize(&m, true); n != frameMax-100 {
		t.Fatalf("setup: header frame %d bytes; want %d", n, frameMax-100)
	}
	if fits(&m, true, frameMax) {
		t.Fatalf("fits(header frame of frame_max-100 bytes) = true; want false (no room for x-death)")
	}
	m.Headers["big"] = string(make([]byte, frameMax-headerReserve(frameMax)-headerFrameSize(&amqp.Publishing{Headers: amqp.Table{"big": ""}}, true)))
	if !fits(&m, true, frameMax) {
		t.Fatalf("fits(header frame of frame_max minus the reserve) = false; want true")
	}
}

// TestRequeueOfAMessageTooLargeToCopy (issue 10, review round 4, R2a): on
// a classic queue Requeue publishes a copy with two more headers; for a
// message near the frame size (sent by another producer) the copy was
// refused with ErrMessageTooLarge, Requeue failed, and the runtime retried
// it forever. It now nacks with requeue and counts the attempt itself.
func TestRequeueOfAMessageTooLargeToCopy(t *testing.T) {
	needBroker(t)
	q := uniqueQueue(t)
	declareQueue(t, q, Classic)
	conn := rawConn(t)
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	m := amqp.Publishing{Headers: amqp.Table{"big": ""}, MessageId: "near-limit", Body: []byte("m")}
	m.Headers["big"] = string(make([]byte, 131072-40-headerFrameSize(&m, false)))
	if err := ch.PublishWithContext(context.Background(), "", q, false, false, m); err != nil {
		t.Fatal(err)
	}
	src, err := NewSource(testConfig(q))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = src.Close(ctx)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	d, err := src.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Requeue(ctx); err != nil {
		t.Fatalf("Requeue(message near the frame size) = %v; want nil (a nack with requeue)", err)
	}
	d2, err := src.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := d2.Message().Attempt; got != 2 {
		t.Errorf("after Requeue, Attempt = %d; want 2", got)
	}
	_ = d2.Ack(ctx)
}

// TestCutTextOnInvalidUTF8 (issue 10, review round 4, R4): cutText stepped
// back to a rune start however far it was, so on invalid UTF-8 (no rune
// start at all) it kept nothing of the text. It steps back at most
// utf8.UTFMax-1 bytes.
func TestCutTextOnInvalidUTF8(t *testing.T) {
	s := strings.Repeat("\x80", 2000)
	got := cutText(s, 1000)
	if len(got) > 1000 || len(got) < 1000-(utf8.UTFMax-1) {
		t.Fatalf("cutText(2000 continuation bytes, 1000) is %d bytes long; want %d to 1000", len(got), 1000-(utf8.UTFMax-1))
	}
	if got := cutText(strings.Repeat("é", 1000), 1000); !utf8.ValidString(got) {
		t.Fatalf("cutText(valid UTF-8) cut inside a rune: %q", got[len(got)-80:])
	}
}

// TestDeadLettersArePipelined (issue 10, review round 4, R3): dead letters
// went one at a time, from write to confirm (~500/s whatever the
// concurrency). Several are now in flight at once, and each still gets its
// own outcome: a return goes to the publish it is for.
func TestDeadLettersArePipelined(t *testing.T) {
	needBroker(t)
	q := uniqueQueue(t)
	declareQueue(t, q, Classic)
	src, err := NewSource(testConfig(q))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = src.Close(ctx)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var peak atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if n := int64(len(src.dlPub.serialSlot)); n > peak.Load() {
				peak.Store(n)
			}
			runtime.Gosched()
		}
	}()
	var wg sync.WaitGroup
	errs := make([]error, 64)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := q // routed by the default exchange
			if i%2 == 1 {
				key = q + "-nowhere" // returned
			}
			errs[i] = src.dlPub.publishDeadLetter(ctx, "", key, amqp.Publishing{MessageId: fmt.Sprint("dl-", i/2), Body: []byte("x")})
		}()
	}
	wg.Wait()
	close(stop)
	<-sampled
	for i, err := range errs {
		if i%2 == 0 && err != nil {
			t.Errorf("dead letter %d (routed) = %v; want nil", i, err)
		}
		if i%2 == 1 && !errors.Is(err, ErrReturned) {
			t.Errorf("dead letter %d (unroutable) = %v; want ErrReturned", i, err)
		}
	}
	if peak.Load() < 2 {
		t.Errorf("at most %d dead letter in flight during 64 concurrent ones; want several", peak.Load())
	}
}
