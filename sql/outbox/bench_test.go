package outbox_test

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/sql/internal/sqltest"
	"github.com/queuekit/queuekit/sql/outbox"
)

// BenchmarkRelayLatency measures, on PostgreSQL, the time from a Write's
// commit to the relay's Publish of that message, with LISTEN/NOTIFY (the
// default) and polling only (DisableListen, polling every 100ms), in the
// same run: b.N messages per mode, one at a time, spaced by a random 0–150ms
// so that commits fall anywhere in the polling cycle. Run it with a count:
//
//	go test -run '^$' -bench RelayLatency -benchtime 300x ./outbox
func BenchmarkRelayLatency(b *testing.B) {
	db := sqltest.Postgres(b)
	o := migrated(b, db, outbox.Config{})
	for _, mode := range []struct {
		name string
		cfg  outbox.RelayConfig
	}{
		{"listen", outbox.RelayConfig{}},
		{"poll", outbox.RelayConfig{DisableListen: true}},
	} {
		published := make(chan time.Time, 1)
		pub := &hookPublisher{inner: memory.NewBroker().Publisher(), before: func(context.Context, string, []*broker.Message) error {
			published <- time.Now()
			return nil
		}}
		r := must(o.Relay(pub, mode.cfg))
		stop := start(b, r)
		if !mode.cfg.DisableListen {
			waitFor(b, "the relay to LISTEN", func() bool { return r.Stats().Listening })
		}
		lat := make([]time.Duration, 0, b.N)
		ctx := context.Background()
		for i := range b.N {
			// Spaced by more than a polling interval, at random, so that
			// commits fall anywhere in the polling cycle.
			time.Sleep(time.Duration(rand.N(150_000)) * time.Microsecond)
			tx := must(db.BeginTx(ctx, nil))
			if err := o.Write(ctx, tx, "q", msg("", fmt.Sprint(i))); err != nil {
				b.Fatal(err)
			}
			t0 := time.Now()
			if err := tx.Commit(); err != nil {
				b.Fatal(err)
			}
			select {
			case t1 := <-published:
				lat = append(lat, t1.Sub(t0))
			case <-time.After(eventually):
				b.Fatal("message not published")
			}
		}
		stop()
		slices.Sort(lat)
		p50, p99 := lat[len(lat)*50/100], lat[min(len(lat)*99/100, len(lat)-1)]
		b.ReportMetric(float64(p50.Microseconds())/1000, mode.name+"-p50-ms")
		b.ReportMetric(float64(p99.Microseconds())/1000, mode.name+"-p99-ms")
	}
}

// BenchmarkRelay measures the relay's throughput on PostgreSQL (b.N rows
// over 50 keys, written beforehand; one relay drains them) against
// publishing the same messages directly to the same kind of publisher (the
// memory broker's), one Publish per message as an application publishing
// after its commit would, and in batches of the relay's size, in the same
// run. msg/s is the relay's; the ratio is relay/direct.
//
//	go test -run '^$' -bench 'Relay$' -benchtime 20000x ./outbox
func BenchmarkRelay(b *testing.B) {
	for _, batch := range []int{100, 1000} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			db := sqltest.Postgres(b)
			o := migrated(b, db, outbox.Config{})
			msgs := make([]*broker.Message, b.N)
			for i := range msgs {
				msgs[i] = msg(fmt.Sprintf("key-%02d", i%50), fmt.Sprintf(`{"order":%d,"item":"tea"}`, i))
			}
			for i := 0; i < len(msgs); i += 1000 {
				writeB(b, db, o, msgs[i:min(i+1000, len(msgs))])
			}
			mb := memory.NewBroker()
			r := must(o.Relay(mb.Publisher(), outbox.RelayConfig{Batch: batch}))
			b.ResetTimer()
			began := time.Now()
			stop := start(b, r)
			for r.Stats().Published < uint64(b.N) {
				time.Sleep(time.Millisecond)
			}
			relayTime := time.Since(began)
			b.StopTimer()
			stop()

			// The direct rate is the best of three runs: an in-memory
			// publish is so short that one GC pause skews a single run.
			direct := func(per int) float64 {
				best := 0.0
				for range 3 {
					pub := memory.NewBroker().Publisher()
					ctx := context.Background()
					t0 := time.Now()
					for i := 0; i < len(msgs); i += per {
						if err := pub.Publish(ctx, "q", msgs[i:min(i+per, len(msgs))]...); err != nil {
							b.Fatal(err)
						}
					}
					best = max(best, float64(len(msgs))/time.Since(t0).Seconds())
				}
				return best
			}
			relayRate := float64(b.N) / relayTime.Seconds()
			d1, dn := direct(1), direct(batch)
			b.ReportMetric(relayRate, "msg/s")
			b.ReportMetric(d1, "direct-msg/s")
			b.ReportMetric(dn, "direct-batched-msg/s")
			b.ReportMetric(relayRate/d1, "relay/direct")
		})
	}
}

func writeB(b *testing.B, db *sql.DB, o *outbox.Outbox, msgs []*broker.Message) {
	b.Helper()
	write(b, db, o, "q", msgs...)
}
