package inbox_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/sql/inbox"
	"github.com/queuekit/queuekit/sql/internal/sqltest"
	"github.com/queuekit/queuekit/sql/sqldb"
)

// BenchmarkInbox measures what the inbox adds per message: the same effect
// (insert a counter row) written by a handler in a transaction of its own,
// and through the inbox's transaction, alternating in one loop so both see
// the same machine. It reports ns/own-tx, ns/inbox, their ratio, and
// ns/duplicate (a redelivery acked without running the handler). One op is
// one message of each kind.
func BenchmarkInbox(b *testing.B) {
	for _, d := range []sqldb.Dialect{sqldb.Postgres, sqldb.SQLite} {
		b.Run(d.String(), func(b *testing.B) {
			db := sqltest.Open(b, d)
			createEffects(b, db)
			ib := newInbox(b, db, inbox.Config{})
			ctx := context.Background()
			own := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
				tx, err := db.BeginTx(ctx, nil)
				if err != nil {
					return err
				}
				defer tx.Rollback() //nolint:errcheck
				if _, err := tx.ExecContext(ctx, incrementSQL, "own-"+string(m.Body)); err != nil {
					return err
				}
				return tx.Commit()
			})
			viaInbox := ib.Middleware()(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
				return increment(ctx, "inbox-"+string(m.Body))
			}))
			var tOwn, tInbox, tDup time.Duration
			i := 0
			for ; b.Loop(); i++ {
				m := msg(strconv.Itoa(i))
				t0 := time.Now()
				if err := own.Handle(ctx, m); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if err := viaInbox.Handle(ctx, m); err != nil {
					b.Fatal(err)
				}
				t2 := time.Now()
				if err := viaInbox.Handle(ctx, m); err != nil {
					b.Fatal(err)
				}
				t3 := time.Now()
				tOwn += t1.Sub(t0)
				tInbox += t2.Sub(t1)
				tDup += t3.Sub(t2)
			}
			n := float64(i)
			b.ReportMetric(float64(tOwn.Nanoseconds())/n, "ns/own-tx")
			b.ReportMetric(float64(tInbox.Nanoseconds())/n, "ns/inbox")
			b.ReportMetric(float64(tDup.Nanoseconds())/n, "ns/duplicate")
			b.ReportMetric(float64(tInbox)/float64(tOwn), "inbox/own-tx")
		})
	}
}
