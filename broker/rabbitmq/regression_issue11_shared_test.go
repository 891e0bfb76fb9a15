package rabbitmq

import (
	"context"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
)

// Issue 11, review 2 #6: a List that times out on a Source with a shared
// Connection dropped that connection for everyone: the Source's in-flight
// ack failed. Dead-letter operations never break a shared connection.
func TestRegressionIssue11CancelledListSparesSharedConnection(t *testing.T) {
	needBroker(t)
	q := uniqueQueue(t)
	conn, err := NewConnection(Dialer{URL: amqpURL()})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	src, err := NewSource(Config{Conn: conn, Queue: q, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := src.DeclareTopology(ctx); err != nil {
		t.Fatal(err)
	}
	fillDeadLetters(t, q, 3000)
	publishTo(t, q, []amqp.Publishing{{Body: []byte("job")}})
	dv, err := src.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lctx, lcancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	_, lerr := src.DeadLetters().List(lctx, broker.DeadLetterQuery{})
	lcancel()
	t.Logf("List with a 30ms deadline: %v", lerr)
	if err := dv.Ack(ctx); err != nil {
		t.Fatalf("a List that timed out broke the shared connection: the in-flight ack = %v", err)
	}
}
