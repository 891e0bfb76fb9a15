package sqlqueue_test

import (
	"context"
	"database/sql"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/sql/internal/sqltest"
	"github.com/queuekit/queuekit/sql/sqldb"
	"github.com/queuekit/queuekit/sql/sqlqueue"
)

// TestLeaseRenewed: a delivery held twice as long as its lease stays
// with its source, which renews the lease; another source gets nothing, and
// the Ack at the end succeeds. When the row is then taken from it (its lease
// given to another claim), its Lease context ends and it cannot settle.
func TestLeaseRenewed(t *testing.T) {
	eachDialect(t, func(t *testing.T, d sqldb.Dialect) {
		url := dsn(t, d)
		db, other := open(t, url), open(t, url)
		if err := sqlqueue.Migrate(context.Background(), db, ""); err != nil {
			t.Fatal(err)
		}
		const vis = time.Second
		publish(t, db, "long", "long-0", "long-1")
		holder := newSource(t, db, sqlqueue.Config{Queue: "long", Prefetch: 1, Visibility: vis})
		dl := receive(t, holder)
		thief := newSource(t, other, sqlqueue.Config{Queue: "long", Prefetch: 1, Visibility: vis, PollInterval: 20 * time.Millisecond})
		second := receive(t, thief) // the other message
		ctx, cancel := context.WithTimeout(context.Background(), 2*vis)
		if got, err := thief.Receive(ctx); err == nil {
			t.Fatalf("another source received %q (Attempt %d) while the first held it past its lease; want the lease renewed", got.Message().Body, got.Message().Attempt)
		}
		cancel()
		if err := dl.Ack(context.Background()); err != nil {
			t.Fatalf("Ack after holding the delivery for 2 leases = %v; want nil", err)
		}

		// The thief's lease is taken from it: the row goes to another
		// claim, which gives it back.
		if _, err := db.Exec("UPDATE " + sqlqueue.DefaultTable + " SET lease_token = 'taken', leased_until = NULL WHERE lease_token IS NOT NULL"); err != nil {
			t.Fatal(err)
		}
		lease := second.(broker.Leased).Lease()
		select {
		case <-lease.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("the Lease context of a delivery whose row was taken did not end within 10s; want it to end at the next renewal")
		}
		if err := second.Ack(context.Background()); !errors.Is(err, broker.ErrStaleDelivery) {
			t.Errorf("Ack of a delivery whose lease was taken = %v; want broker.ErrStaleDelivery", err)
		}
	})
}

// TestNotifyWakes: on PostgreSQL a source that polls once an hour still
// receives, at once, what a publisher of another process (another pool: no
// in-process wake) publishes: the NOTIFY of the publish wakes it. Each of
// three rounds waits for a Receive that blocked first.
func TestNotifyWakes(t *testing.T) {
	url := dsn(t, sqldb.Postgres)
	consumerDB, producerDB := open(t, url), open(t, url)
	if err := sqlqueue.Migrate(context.Background(), consumerDB, ""); err != nil {
		t.Fatal(err)
	}
	src := newSource(t, consumerDB, sqlqueue.Config{Queue: "notified", PollInterval: time.Hour})
	for round := range 3 {
		got := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			d, err := src.Receive(ctx)
			if err == nil {
				err = d.Ack(context.Background())
			}
			got <- err
		}()
		time.Sleep(200 * time.Millisecond) // let the Receive block on an empty queue
		publish(t, producerDB, "notified", "notified-"+strconv.Itoa(round))
		if err := <-got; err != nil {
			t.Fatalf("round %d: Receive with a 1h poll interval, after a publish from another pool = %v; want the NOTIFY to wake it", round, err)
		}
	}
}

// TestGiveBackUncounted: what no handler saw is given back without counting
// a delivery: a Release, the rows a source claimed into its prefetch buffer
// and never handed out when it is paused or closed. A Requeue counts one.
func TestGiveBackUncounted(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		if err := sqlqueue.Migrate(context.Background(), db, ""); err != nil {
			t.Fatal(err)
		}
		publish(t, db, "uncounted", "u-0", "u-1", "u-2", "u-3")
		src := newSource(t, db, sqlqueue.Config{Queue: "uncounted", Prefetch: 4})
		first := receive(t, src) // claims all four; three stay buffered
		if err := first.(broker.Releaser).Release(context.Background()); err != nil {
			t.Fatalf("Release = %v", err)
		}
		if err := src.Pause(context.Background()); err != nil {
			t.Fatalf("Pause = %v", err)
		}
		if err := src.Resume(context.Background()); err != nil {
			t.Fatalf("Resume = %v", err)
		}
		again := receive(t, src)
		if m := again.Message(); m.Attempt != 1 {
			t.Errorf("after Release, Pause and Resume, received %q with Attempt %d; want 1 (nothing a handler saw)", m.Body, m.Attempt)
		}
		if err := again.Requeue(context.Background()); err != nil {
			t.Fatalf("Requeue = %v", err)
		}
		requeued := string(again.Message().Body)
		if err := src.Close(context.Background()); err != nil {
			t.Fatalf("Close = %v", err)
		}
		src2 := newSource(t, db, sqlqueue.Config{Queue: "uncounted", Prefetch: 4})
		for range 4 {
			dl := receive(t, src2)
			m := dl.Message()
			want := 1
			if string(m.Body) == requeued {
				want = 2
			}
			if m.Attempt != want {
				t.Errorf("after Close, %q has Attempt %d; want %d", m.Body, m.Attempt, want)
			}
			if err := dl.Ack(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
	})
}
