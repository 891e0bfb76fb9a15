package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// Issue 14, review R1: a give-back (Release, Pause) spends no attempt, not
// only on the delivery that follows it but on every later one. On a quorum
// queue RabbitMQ counts each give-back in x-delivery-count; the source kept
// the right Attempt for the next delivery only, so a message released twice
// and then requeued came back with Attempt 4 (release, release, requeue,
// requeue gave 1, 1, 1, 4, 5).

// attemptsSource returns a Source of a fresh queue of type typ, declared,
// holding n messages (ids "0".."n-1"), and closes it when the test ends.
func attemptsSource(t *testing.T, typ string, n, prefetch int) (*Source, string) {
	t.Helper()
	needBroker(t)
	q := uniqueQueue(t)
	cfg := testConfig(q)
	cfg.Topology.QueueType = typ
	cfg.Prefetch = prefetch
	cfg.Logger = quietLogger()
	src, err := NewSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := src.Close(ctx); err != nil {
			t.Errorf("Close = %v", err)
		}
	})
	if err := src.DeclareTopology(context.Background()); err != nil {
		t.Fatal(err)
	}
	prepublish(t, q, n, 16)
	return src, q
}

// TestReleasesSpendNoAttemptOnLaterDeliveries settles one message in a
// sequence of releases, requeues and an ack: its Attempt counts only the
// requeues (the handler's failures), on a classic and on a quorum queue.
func TestReleasesSpendNoAttemptOnLaterDeliveries(t *testing.T) {
	for _, typ := range []string{Classic, Quorum} {
		for _, seq := range []struct {
			name string
			ops  []string
			want []int
		}{
			{"release release requeue requeue", []string{"release", "release", "requeue", "requeue", "ack"}, []int{1, 1, 1, 2, 3}},
			{"interleaved", []string{"release", "requeue", "release", "requeue", "release", "release", "requeue", "ack"}, []int{1, 1, 2, 2, 3, 3, 3, 4}},
			{"requeue first", []string{"requeue", "release", "requeue", "release", "ack"}, []int{1, 2, 2, 3, 3}},
		} {
			t.Run(typ+"/"+seq.name, func(t *testing.T) {
				src, _ := attemptsSource(t, typ, 1, 16)
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				var got []int
				for _, op := range seq.ops {
					d, err := src.Receive(ctx)
					if err != nil {
						t.Fatalf("Receive after %v: %v", got, err)
					}
					got = append(got, d.Message().Attempt)
					switch op {
					case "release":
						err = d.(broker.Releaser).Release(ctx)
					case "requeue":
						err = d.Requeue(ctx)
					case "ack":
						err = d.Ack(ctx)
					}
					if err != nil {
						t.Fatalf("%s: %v", op, err)
					}
				}
				t.Logf("%s, %s: %v → Attempts %v", typ, seq.name, seq.ops, got)
				if !slices.Equal(got, seq.want) {
					t.Errorf("Attempts %v; want %v (a release spends no attempt, a requeue one)", got, seq.want)
				}
			})
		}
	}
}

// TestPauseWithPrefetchedMessagesSpendsNoAttempt pauses a source whose
// client holds a full prefetch, with acks and releases just before and
// during the pause, three times over: every message comes back with
// Attempt 1. On a quorum queue RabbitMQ itself returns, and counts, the
// deliveries it was sending when the subscription was cancelled; the source
// never saw them, so they came back with Attempt 2 unless it holds its
// settlements while it cancels.
func TestPauseWithPrefetchedMessagesSpendsNoAttempt(t *testing.T) {
	for _, typ := range []string{Classic, Quorum} {
		t.Run(typ, func(t *testing.T) {
			const n = 120
			src, q := attemptsSource(t, typ, n, 16)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			attempts := map[string][]int{}
			var spent []string
			take := func() broker.Delivery {
				t.Helper()
				d, err := src.Receive(ctx)
				if err != nil {
					t.Fatalf("Receive: %v", err)
				}
				m := d.Message()
				attempts[m.ID] = append(attempts[m.ID], m.Attempt)
				if m.Attempt != 1 {
					spent = append(spent, fmt.Sprintf("%s(%d)", m.ID, m.Attempt))
				}
				return d
			}
			acked := 0
			for range 3 {
				var held []broker.Delivery
				for range 8 {
					held = append(held, take())
				}
				// Acks right before the pause free prefetch slots: the
				// broker is sending their successors as it cancels.
				for _, d := range held[:4] {
					if err := d.Ack(ctx); err != nil {
						t.Fatal(err)
					}
					acked++
				}
				if err := src.Pause(ctx); err != nil {
					t.Fatalf("Pause: %v", err)
				}
				// Deliveries in hand stay valid: release two, ack two.
				for _, d := range held[4:6] {
					if err := d.(broker.Releaser).Release(ctx); err != nil {
						t.Fatal(err)
					}
				}
				for _, d := range held[6:] {
					if err := d.Ack(ctx); err != nil {
						t.Fatal(err)
					}
					acked++
				}
				if err := src.Resume(ctx); err != nil {
					t.Fatalf("Resume: %v", err)
				}
			}
			for acked < n {
				if err := take().Ack(ctx); err != nil {
					t.Fatal(err)
				}
				acked++
			}
			t.Logf("%s: %d messages acked after 3 pauses with a full prefetch; deliveries with Attempt > 1: %v", typ, n, spent)
			if len(attempts) != n {
				t.Errorf("%d distinct messages received; want %d", len(attempts), n)
			}
			if len(spent) > 0 {
				t.Errorf("%d deliveries came back with an attempt spent by a pause: %v", len(spent), spent)
			}
			if ctlUsable() {
				if ready, unacked := drainedQueueCounts(t, q); ready != 0 || unacked != 0 {
					t.Errorf("queue after the run: ready=%d unacked=%d; want 0 0", ready, unacked)
				}
			}
		})
	}
}

// TestConsumerPauseResumeSpendsNoAttempt is review R1's M5 with the
// runtime: a consumer paused and resumed while its handlers work and its
// prefetch is full hands every message to a handler with Attempt 1.
func TestConsumerPauseResumeSpendsNoAttempt(t *testing.T) {
	for _, typ := range []string{Classic, Quorum} {
		t.Run(typ, func(t *testing.T) {
			const n = 400
			src, _ := attemptsSource(t, typ, n, 16)
			var handled atomic.Int64
			var mu sync.Mutex
			seen := map[string]bool{}
			var spent []string
			c, err := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
				time.Sleep(time.Millisecond)
				mu.Lock()
				seen[m.ID] = true
				if m.Attempt != 1 {
					spent = append(spent, fmt.Sprintf("%s(%d)", m.ID, m.Attempt))
				}
				mu.Unlock()
				handled.Add(1)
				return nil
			}), consumer.WithConcurrency(8), consumer.WithLogger(quietLogger()))
			_, cancel, done := runInBackground(t, c, err)
			defer cancel()
			for i := range 5 {
				at := int64(40 + 60*i)
				waitFor(t, 30*time.Second, fmt.Sprintf("%d handled", at), func() bool { return handled.Load() >= at })
				if err := c.Pause(context.Background()); err != nil {
					t.Fatalf("Pause: %v", err)
				}
				if err := c.Resume(context.Background()); err != nil {
					t.Fatalf("Resume: %v", err)
				}
			}
			waitFor(t, 60*time.Second, "all handled", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(seen) == n
			})
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("Run = %v", err)
			}
			mu.Lock()
			defer mu.Unlock()
			t.Logf("%s: %d messages, %d handled, 5 pauses; handled with Attempt > 1: %v", typ, n, handled.Load(), spent)
			if len(spent) > 0 {
				t.Errorf("%d messages reached a handler with an attempt spent, though no handler failed: %v", len(spent), spent)
			}
		})
	}
}

var errDependencyDown = errors.New("dependency down")

// TestKillSwitchOutageSpendsOnlyRealFailures runs a small outage under
// consumer.WithKillSwitch: the dependency fails every call from the 100th
// success until shortly after the switch trips. No message is
// dead-lettered, all are handled, and none reaches a handler with an
// Attempt above its real failures + 1: the trip's give-backs (the paused
// prefetch, the failures given back) spend nothing.
func TestKillSwitchOutageSpendsOnlyRealFailures(t *testing.T) {
	for _, typ := range []string{Classic, Quorum} {
		t.Run(typ, func(t *testing.T) {
			const n = 400
			src, _ := attemptsSource(t, typ, n, 16)
			var down atomic.Bool
			var ok, dead, trips atomic.Int64
			var mu sync.Mutex
			failed := map[string]int{}
			var over []string
			h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
				time.Sleep(time.Millisecond)
				mu.Lock()
				defer mu.Unlock()
				if m.Attempt > failed[m.ID]+1 {
					over = append(over, fmt.Sprintf("%s(attempt %d, failed %d)", m.ID, m.Attempt, failed[m.ID]))
				}
				if down.Load() {
					failed[m.ID]++
					return errDependencyDown
				}
				if ok.Add(1) == 100 {
					down.Store(true)
				}
				return nil
			})
			var recovering sync.WaitGroup
			defer recovering.Wait()
			c, err := consumer.New(src, h,
				consumer.WithConcurrency(8),
				consumer.WithMaxDeliveries(3),
				consumer.WithLogger(quietLogger()),
				consumer.WithEventHook(func(e consumer.Event) {
					if e.Kind == consumer.EventTripped && trips.Add(1) == 1 {
						recovering.Add(1)
						go func() {
							defer recovering.Done()
							time.Sleep(300 * time.Millisecond)
							down.Store(false)
						}()
					}
				}),
				consumer.WithObserver(func(_ context.Context, _ *broker.Message, s consumer.Settlement, _ error) {
					if s == consumer.SettledDeadLetter {
						dead.Add(1)
					}
				}),
				consumer.WithKillSwitch(consumer.KillSwitch{Window: 5 * time.Second, MinMessages: 5, RestartTimeout: 500 * time.Millisecond, ProbeMessages: 3}))
			_, cancel, done := runInBackground(t, c, err)
			defer cancel()
			waitFor(t, 60*time.Second, "all handled", func() bool { return ok.Load() >= n })
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("Run = %v", err)
			}
			mu.Lock()
			defer mu.Unlock()
			t.Logf("%s: %d handled, trips %d, dead letters %d, messages that failed %d; stats %+v; Attempt above failures+1: %v",
				typ, ok.Load(), trips.Load(), dead.Load(), len(failed), c.Stats(), over)
			if trips.Load() == 0 {
				t.Errorf("the kill switch never tripped")
			}
			if dead.Load() != 0 {
				t.Errorf("%d dead letters; want 0", dead.Load())
			}
			if len(over) > 0 {
				t.Errorf("%d deliveries had an Attempt above their real failures + 1 (give-backs spent attempts): %v", len(over), over)
			}
		})
	}
}
