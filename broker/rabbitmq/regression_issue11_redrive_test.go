package rabbitmq

import (
	"context"
	"errors"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
)

// Issue 11, review 2 #4: a Destination that is the dead-letter queue, or
// the name of its lock, is refused before anything is sent; a dead letter
// whose source header names the dead-letter queue is skipped and kept.
func TestRegressionIssue11RedriveIntoTheDLQ(t *testing.T) {
	q, _, dl := dlFixture(t, Classic)
	m := deadLetterOf(q, 0)
	m.Headers[broker.HeaderSource] = q + ".dlq"
	publishTo(t, q+".dlq", []amqp.Publishing{m})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, dest := range []string{q + ".dlq", q + ".dlq" + lockSuffix} {
		res, err := dl.Redrive(ctx, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{Destination: dest})
		if !errors.Is(err, broker.ErrInvalidConfig) || len(res.Done) != 0 {
			t.Errorf("Redrive to %q = %v, %v; want ErrInvalidConfig, nothing done", dest, res.Done, err)
		}
	}
	res, err := dl.Redrive(ctx, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{})
	if len(res.Done) != 0 || len(res.Skipped) != 1 || !errors.Is(res.Skipped[0], broker.ErrNoSource) {
		t.Errorf("Redrive of a dead letter from the dead-letter queue = done %v, skipped %v, %v; want skipped with ErrNoSource", res.Done, res.Skipped, err)
	}
	page, err := dl.List(ctx, broker.DeadLetterQuery{})
	if err != nil || len(page.Items) != 1 || page.Items[0].Reason.Source != q+".dlq" {
		t.Fatalf("List after = %+v, %v; want the dead letter with its reason", page.Items, err)
	}
}

// Issue 11, review 2 #5: a source header that is not UTF-8 made a dry run
// send it as a queue name (FRAME_ERROR, connection closed). Names are
// checked before any broker call; such a dead letter is skipped.
func TestRegressionIssue11NonUTF8Names(t *testing.T) {
	q, _, dl := dlFixture(t, Classic)
	m := deadLetterOf(q, 0)
	m.Headers[broker.HeaderSource] = q + "\xff\xfe"
	publishTo(t, q+".dlq", []amqp.Publishing{m, deadLetterOf(q, 1)})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := dl.Redrive(ctx, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{DryRun: true})
	if len(res.Done) != 1 || res.Done[0] != dlID(1) || len(res.Skipped) != 1 || !errors.Is(res.Skipped[0], broker.ErrNoSource) {
		t.Fatalf("dry run = done %v, skipped %v, %v; want %s done, %s skipped with ErrNoSource", res.Done, res.Skipped, err, dlID(1), dlID(0))
	}
	if _, err := dl.Redrive(ctx, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{Destination: "bad\xff", DryRun: true}); !errors.Is(err, broker.ErrInvalidConfig) {
		t.Fatalf("Redrive to a Destination that is not UTF-8 = %v; want ErrInvalidConfig", err)
	}
	if _, err := NewDeadLetters(DeadLetterConfig{Dialer: Dialer{URL: amqpURL()}, Queue: "bad\xff"}); !errors.Is(err, broker.ErrInvalidConfig) {
		t.Fatalf("NewDeadLetters with a queue name that is not UTF-8 = %v; want ErrInvalidConfig", err)
	}
}
