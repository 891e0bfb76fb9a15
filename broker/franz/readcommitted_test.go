package franz_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/franz"
)

// writeTransactions writes, to the one partition of topic, plain records
// and transactions of a transactional producer (kgo.TransactionalID),
// committed and aborted, interleaved:
//
//	p1, txn[c1 c2] commit, txn[a1 a2] abort, p2, txn[c3] commit, txn[a3] abort
//
// Each transaction ends with its control record (the commit or abort
// marker), which takes an offset of its own.
func writeTransactions(t *testing.T, e *env, topic string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tx, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.TransactionalID("tx-"+topic),
		kgo.DefaultProduceTopic(topic), kgo.ProducerLinger(0))
	if err != nil {
		t.Fatalf("transactional client: %v", err)
	}
	defer tx.Close()
	plain := func(body string) {
		t.Helper()
		if err := e.cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Value: []byte(body)}).FirstErr(); err != nil {
			t.Fatalf("produce %s: %v", body, err)
		}
	}
	txn := func(commit bool, bodies ...string) {
		t.Helper()
		if err := tx.BeginTransaction(); err != nil {
			t.Fatalf("BeginTransaction: %v", err)
		}
		for _, b := range bodies {
			if err := tx.ProduceSync(ctx, &kgo.Record{Value: []byte(b)}).FirstErr(); err != nil {
				t.Fatalf("transactional produce %s: %v", b, err)
			}
		}
		end := kgo.TryAbort
		if commit {
			end = kgo.TryCommit
		}
		if err := tx.EndTransaction(ctx, end); err != nil {
			t.Fatalf("EndTransaction(commit %v): %v", commit, err)
		}
	}
	plain("p1")
	txn(true, "c1", "c2")
	txn(false, "a1", "a2")
	plain("p2")
	txn(true, "c3")
	txn(false, "a3")
}

// receiveAll receives and acks until nothing comes for quiet, and returns
// the bodies in order.
func receiveAll(t *testing.T, src broker.Source, quiet time.Duration) []string {
	t.Helper()
	var out []string
	for {
		ctx, cancel := context.WithTimeout(context.Background(), quiet)
		d, err := src.Receive(ctx)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			return out
		}
		if err != nil {
			t.Fatalf("Receive = %v", err)
		}
		out = append(out, string(d.Message().Body))
		if err := d.Ack(context.Background()); err != nil {
			t.Fatalf("Ack = %v", err)
		}
	}
}

// TestReadCommitted: with the default isolation the Source hands out the
// plain records and those of committed transactions, never a record of an
// aborted transaction nor a control record (transaction marker), and
// commits past all of them: the group's lag reaches 0. With
// ReadUncommitted the aborted transactions' data records are handed out
// too (still no control record). Kafka protocol (in-process kfake cluster;
// its transactions are franz-go's transactional producer's).
func TestReadCommitted(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, "txn", 1)
	writeTransactions(t, e, topic)
	for _, c := range []struct {
		iso  franz.Isolation
		want []string
	}{
		{franz.ReadCommitted, []string{"p1", "c1", "c2", "p2", "c3"}},
		{franz.ReadUncommitted, []string{"p1", "c1", "c2", "a1", "a2", "p2", "c3", "a3"}},
	} {
		t.Run(c.iso.String(), func(t *testing.T) {
			cfg := e.config(topic, "g-txn-"+c.iso.String())
			cfg.Isolation = c.iso
			src := newSource(t, cfg)
			got := receiveAll(t, src, 500*time.Millisecond)
			if !slices.Equal(got, c.want) {
				t.Fatalf("%v: received %q; want %q", c.iso, got, c.want)
			}
			var last broker.Backlog
			waitFor(t, "the group's backlog reaches 0 (committed past the aborted records and the markers)", func() bool {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				b, err := src.Backlog(ctx)
				last = b
				return err == nil && b.Messages == 0
			})
			committed := e.committed(t, cfg.GroupID, topic)
			t.Logf("%v: received %q; backlog %+v; committed offset %d (the log holds 12 offsets: 8 data records, 4 markers)",
				c.iso, got, last, committed[0])
		})
	}
}
