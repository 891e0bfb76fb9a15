package rabbitmq

import (
	"context"
	"slices"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
)

// quorumDLQWithLimit declares q's dead-letter queue as a quorum queue with a
// delivery limit of 3 (what a policy, or RabbitMQ 4's default of 20, does):
// a message returned to it more than 3 times is dropped by the broker.
func quorumDLQWithLimit(t *testing.T, q string) {
	t.Helper()
	ch, err := rawConn(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	if _, err := ch.QueueDeclare(q+".dlq", true, false, false, false, amqp.Table{amqp.QueueTypeArg: Quorum, "x-delivery-limit": int32(3)}); err != nil {
		t.Fatal(err)
	}
}

func newDLFor(t *testing.T, cfg DeadLetterConfig) *DeadLetters {
	t.Helper()
	if cfg.Dialer.URL == "" && cfg.Conn == nil {
		cfg.Dialer = Dialer{URL: amqpURL()}
	}
	cfg.Logger = quietLogger()
	dl, err := NewDeadLetters(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := dl.Close(ctx); err != nil {
			t.Errorf("Close = %v", err)
		}
	})
	return dl
}

// Issue 11, review 2 #1 and #3: browsing a quorum dead-letter queue must
// never make the broker drop a dead letter (every browse used to return
// each message, which a quorum queue counts as a delivery), and keeps the
// order. Run with the type told (Quorum) and not told.
func TestRegressionIssue11QuorumBrowseKeepsDeadLetters(t *testing.T) {
	for _, typ := range []string{Quorum, ""} {
		t.Run("type="+typ, func(t *testing.T) {
			needBroker(t)
			q := uniqueQueue(t)
			quorumDLQWithLimit(t, q)
			fillDeadLetters(t, q, 5)
			dl := newDLFor(t, DeadLetterConfig{Queue: q, QueueType: typ})
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			for i := range 6 {
				page, err := dl.List(ctx, broker.DeadLetterQuery{})
				if err != nil {
					t.Fatalf("List %d = %v", i+1, err)
				}
				if got := ids(page.Items); !slices.Equal(got, wantIDs(seq(0, 5)...)) {
					t.Fatalf("List %d = %v; want %v (in order, none dropped)", i+1, got, wantIDs(seq(0, 5)...))
				}
				if _, err := dl.Count(ctx, broker.DeadLetterFilter{Reason: "bad"}); err != nil {
					t.Fatalf("Count = %v", err)
				}
			}
			n, err := dl.Count(ctx, broker.DeadLetterFilter{})
			if err != nil || n != 5 {
				t.Fatalf("after 6 Lists and 6 Counts, Count = %d, %v; want 5: browsing dropped dead letters", n, err)
			}
		})
	}
}

// Issue 11, review 2 #1 and #3: Lists cut short by tiny deadlines neither
// drop nor reorder the dead letters of a quorum dead-letter queue.
func TestRegressionIssue11QuorumTinyDeadlines(t *testing.T) {
	needBroker(t)
	q := uniqueQueue(t)
	quorumDLQWithLimit(t, q)
	const n = 50
	fillDeadLetters(t, q, n)
	dl := newDLFor(t, DeadLetterConfig{Queue: q, QueueType: Quorum})
	for i := range 10 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(1+i*3)*time.Millisecond)
		_, _ = dl.List(ctx, broker.DeadLetterQuery{})
		cancel()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	page, err := dl.List(ctx, broker.DeadLetterQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(page.Items); !slices.Equal(got, wantIDs(seq(0, n)...)) {
		t.Fatalf("after Lists with tiny deadlines: %d dead letters %v…; want %d in order", len(got), got[:min(8, len(got))], n)
	}
}
