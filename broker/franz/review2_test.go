package franz_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/franz"
)

// TestReview2HungProduceBoundedByCtx (review 2, R2-2): when the broker
// stops answering produce requests, DeadLetter and RequeueAfter (retry-topic
// write) return at their ctx's end, and Close, called meanwhile, returns at
// its own ctx's end: neither waits for kgo's idempotent producer, which
// keeps a record it has taken. The DeadLetter is not settled: nothing is
// committed past the record. Kafka protocol (in-process kfake cluster,
// whose ControlKey blocks every Produce request until released).
// Correctness bounds only: ctx + 3 s.
func TestReview2HungProduceBoundedByCtx(t *testing.T) {
	t.Parallel()
	for _, what := range []string{"DeadLetter", "RequeueAfterTier"} {
		t.Run(what, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			topic := e.topic(t, "hung-produce", 1)
			group := "g-" + topic
			cfg := e.config(topic, group)
			if what == "RequeueAfterTier" {
				cfg.RetryTopics = []time.Duration{time.Second}
			}
			s, err := franz.NewSource(cfg)
			if err != nil {
				t.Fatal(err)
			}
			release := make(chan struct{})
			var once sync.Once
			unblock := func() { once.Do(func() { close(release) }) }
			t.Cleanup(func() {
				unblock()
				franz.WaitClientsClosed(s)
			})
			if cfg.RetryTopics != nil {
				if err := s.DeclareTopology(t.Context()); err != nil {
					t.Fatal(err)
				}
			}
			e.produceN(t, topic, 0, 1, func(int) string { return "k" })
			d := receive(t, s)
			_, off := partitionOf(t, d.Message().ID)
			e.cluster.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
				e.cluster.KeepControl()
				<-release
				return nil, nil, false
			})

			const opTimeout, closeTimeout = 1500 * time.Millisecond, 500 * time.Millisecond
			octx, ocancel := context.WithTimeout(context.Background(), opTimeout)
			defer ocancel()
			start := time.Now()
			done := make(chan error, 1)
			go func() {
				if what == "DeadLetter" {
					done <- d.DeadLetter(octx, broker.Reason{Err: "x"})
				} else {
					done <- d.(broker.DelayedRequeuer).RequeueAfter(octx, 500*time.Millisecond)
				}
			}()
			time.Sleep(200 * time.Millisecond)
			cctx, ccancel := context.WithTimeout(context.Background(), closeTimeout)
			defer ccancel()
			closed := make(chan error, 1)
			cstart := time.Now()
			go func() { closed <- s.Close(cctx) }()
			select {
			case err := <-closed:
				t.Logf("Close(%v) during the hung write: %v after %v", closeTimeout, err, time.Since(cstart))
			case <-time.After(closeTimeout + 3*time.Second):
				t.Errorf("Close(%v ctx) still blocked after %v during a hung write", closeTimeout, time.Since(cstart))
				unblock()
				<-closed
			}
			select {
			case err = <-done:
				t.Logf("%s during the hung write: %v after %v", what, err, time.Since(start))
			case <-time.After(opTimeout + 3*time.Second):
				t.Errorf("%s(%v ctx) still blocked after %v", what, opTimeout, time.Since(start))
				unblock()
				err = <-done
			}
			if what == "DeadLetter" && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("DeadLetter = %v, want an error wrapping ctx's", err)
			}
			unblock()
			if c, ok := e.committed(t, group, topic)[0]; ok && c > off {
				t.Errorf("committed offset %d past the record at %d whose %s did not finish", c, off, what)
			}
		})
	}
}
