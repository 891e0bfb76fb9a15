package rabbitmq

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// fakeChannel is the broker's side of one channel's settlements, as
// RabbitMQ keeps it: the unacknowledged deliveries by tag. A multiple ack
// settles every outstanding tag <= its own and, like every ack or nack,
// fails the channel ("unknown delivery tag") when its own tag is not
// outstanding. It also fails when a settlement covers a tag the test's
// handlers did not ack: the one thing coalescing must never do.
type fakeChannel struct {
	mu          sync.Mutex
	settled     *sync.Cond // broadcast when a tag is settled
	outstanding map[uint64]bool
	okToAck     map[uint64]bool // the handler acked it
	acked       map[uint64]int
	nacked      map[uint64]int
	multiples   int
	singles     int
	err         error
}

func newFakeChannel(n int) *fakeChannel {
	f := &fakeChannel{outstanding: map[uint64]bool{}, okToAck: map[uint64]bool{}, acked: map[uint64]int{}, nacked: map[uint64]int{}}
	f.settled = sync.NewCond(&f.mu)
	for t := uint64(1); t <= uint64(n); t++ {
		f.outstanding[t] = true
	}
	return f
}

func (f *fakeChannel) fail(format string, args ...any) error {
	if f.err == nil {
		f.err = fmt.Errorf(format, args...)
	}
	return f.err
}

func (f *fakeChannel) handlerAcked(tag uint64) {
	f.mu.Lock()
	f.okToAck[tag] = true
	f.mu.Unlock()
}

func (f *fakeChannel) Ack(tag uint64, multiple bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	if !f.outstanding[tag] {
		return f.fail("PRECONDITION_FAILED - unknown delivery tag %d (ack multiple=%v)", tag, multiple)
	}
	settle := []uint64{tag}
	if multiple {
		f.multiples++
		settle = settle[:0]
		for t := range f.outstanding {
			if t <= tag {
				settle = append(settle, t)
			}
		}
	} else {
		f.singles++
	}
	for _, t := range settle {
		if !f.okToAck[t] {
			return f.fail("ack (tag %d, multiple=%v) covers tag %d, which its handler did not ack", tag, multiple, t)
		}
		delete(f.outstanding, t)
		f.acked[t]++
	}
	f.settled.Broadcast()
	return nil
}

func (f *fakeChannel) Nack(tag uint64, multiple, requeue bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	if multiple {
		return f.fail("nack of tag %d with multiple=true", tag)
	}
	if !f.outstanding[tag] {
		return f.fail("PRECONDITION_FAILED - unknown delivery tag %d (nack)", tag)
	}
	if f.okToAck[tag] {
		return f.fail("nack of tag %d, which its handler acked", tag)
	}
	delete(f.outstanding, tag)
	f.nacked[tag]++
	f.settled.Broadcast()
	return nil
}

// TestAckerNeverCoversAnUnsettledTag drives an acker as the Source does
// (including the flushes of workers that find nothing buffered), on
// a fake channel that checks RabbitMQ's rules: workers take tags in order
// from one channel (the client's deliveries) but register them in whatever
// order they get there, then ack most, nack some and abandon a few (a
// handler cut off at the drain deadline). No multiple ack may cover a tag
// that was not acked, no settlement may name a tag that is not outstanding,
// and after the channel's final flush every acked tag is acked once and
// only the abandoned ones are left outstanding.
func TestAckerNeverCoversAnUnsettledTag(t *testing.T) {
	for _, tc := range []struct {
		name           string
		batch, workers int
	}{
		{"batch 16, 8 workers", 16, 8},
		{"batch 2, 2 workers", 2, 2},
		{"batch 4, 32 workers", 4, 32},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const n = 20000
			f := newFakeChannel(n)
			a := newAcker(f, link{}, tc.batch, 200*time.Microsecond, 64, nil)
			// The broker delivers while fewer than prefetch deliveries
			// are unsettled (the abandoned ones hold their slots).
			const prefetch = 64
			tags := make(chan uint64, prefetch)
			go func() {
				for tag := uint64(1); tag <= n; tag++ {
					f.mu.Lock()
					for f.err == nil && tag-uint64(len(f.acked)+len(f.nacked)) > prefetch {
						f.settled.Wait()
					}
					f.mu.Unlock()
					tags <- tag
				}
				close(tags)
			}()
			var mu sync.Mutex
			abandoned := map[uint64]bool{}
			var wg sync.WaitGroup
			for w := 0; w < tc.workers; w++ {
				wg.Go(func() {
					r := rand.New(rand.NewPCG(uint64(w), 1))
					for {
						// As Source.next: a worker that finds nothing
						// buffered tells the acker before it waits.
						var tag uint64
						var ok bool
						select {
						case tag, ok = <-tags:
						default:
							a.wait()
							tag, ok = <-tags
							a.unidle()
						}
						if !ok {
							break
						}
						a.register(tag)
						for range r.IntN(3) {
							time.Sleep(0) // let others overtake
						}
						switch x := r.IntN(100); {
						case x < 3:
							if err := a.nack(tag); err != nil {
								t.Errorf("nack(%d) = %v", tag, err)
							}
						case x < 4 && tag > n-500:
							// Only near the end: an abandoned tag
							// stops the prefix for good, and every
							// ack above it goes alone.
							mu.Lock()
							abandoned[tag] = true
							mu.Unlock()
						default:
							f.handlerAcked(tag)
							flush, err := a.ack(tag)
							if err != nil {
								t.Errorf("ack(%d) = %v", tag, err)
							}
							if flush {
								if err := a.flush(); err != nil {
									t.Errorf("flush after ack(%d) = %v", tag, err)
								}
							}
						}
					}
				})
			}
			wg.Wait()
			f.mu.Lock()
			f.settled.Broadcast()
			f.mu.Unlock()
			if err := a.flushAll(true); err != nil {
				t.Errorf("final flushAll = %v", err)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if f.err != nil {
				t.Fatalf("the fake broker closed the channel: %v", f.err)
			}
			for tag := range f.okToAck {
				if f.acked[tag] != 1 {
					t.Errorf("tag %d acked %d times; want 1", tag, f.acked[tag])
				}
			}
			for tag := range f.outstanding {
				if !abandoned[tag] {
					t.Errorf("tag %d still outstanding; only abandoned tags may be", tag)
				}
			}
			if len(f.outstanding) != len(abandoned) {
				t.Errorf("outstanding %d; want the %d abandoned", len(f.outstanding), len(abandoned))
			}
			t.Logf("%d tags: %d acked with %d multiple and %d single acks (%.1f acks per frame), %d nacked, %d abandoned",
				n, len(f.acked), f.multiples, f.singles, float64(len(f.acked))/float64(f.multiples+f.singles), len(f.nacked), len(abandoned))
			if _, err := a.ack(n + 1); !errors.Is(err, amqp.ErrClosed) {
				t.Errorf("ack after the final flush = %v; want amqp.ErrClosed", err)
			}
		})
	}
}

// TestAckerTimings checks, in a synctest bubble, when waiting acks go out:
// a prefix shorter than the batch within one delay; acks above a delivery
// still being handled after one delay, or once a batch of them waits, one
// by one; a batch at once.
func TestAckerTimings(t *testing.T) {
	const delay = 2 * time.Millisecond
	t.Run("a short prefix goes within the delay", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFakeChannel(10)
			a := newAcker(f, link{}, 16, delay, 64, nil)
			defer a.flushAll(true)
			for tag := uint64(1); tag <= 3; tag++ {
				a.register(tag)
				f.handlerAcked(tag)
				if flush, err := a.ack(tag); flush || err != nil {
					t.Fatalf("ack(%d) = %v, %v; want false, nil", tag, flush, err)
				}
			}
			time.Sleep(delay - time.Microsecond)
			synctest.Wait()
			if got := f.count(); got != 0 {
				t.Fatalf("before the delay: %d acked; want 0", got)
			}
			time.Sleep(time.Microsecond)
			synctest.Wait()
			if got, m, s := f.counts(); got != 3 || m != 1 || s != 0 {
				t.Fatalf("after the delay: %d acked with %d multiple, %d single acks; want 3 with 1 multiple", got, m, s)
			}
		})
	})
	t.Run("acks above a gap go alone after one delay", func(t *testing.T) {
		// Review R2: they waited ten delays, holding prefetch slots while
		// workers idled (prefetch = concurrency, varying handler times).
		synctest.Test(t, func(t *testing.T) {
			f := newFakeChannel(10)
			a := newAcker(f, link{}, 16, delay, 64, nil)
			defer a.flushAll(true)
			for tag := uint64(1); tag <= 5; tag++ {
				a.register(tag)
			}
			for _, tag := range []uint64{1, 3, 4, 5} { // 2 is still being handled
				f.handlerAcked(tag)
				if _, err := a.ack(tag); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(delay - time.Microsecond)
			synctest.Wait()
			if got := f.count(); got != 0 {
				t.Fatalf("before the delay: %d acked; want 0", got)
			}
			time.Sleep(time.Microsecond)
			synctest.Wait()
			if got, m, s := f.counts(); got != 4 || m != 0 || s != 4 {
				t.Fatalf("after one delay: %d acked, %d multiple, %d single; want 4 single (tag 1 a prefix of one, 3-5 beyond the gap)", got, m, s)
			}
			if f.acked[2] != 0 {
				t.Fatal("tag 2 acked")
			}
		})
	})
	t.Run("a batch of acks above a gap goes at once", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFakeChannel(10)
			a := newAcker(f, link{}, 4, time.Hour, 64, nil)
			defer a.flushAll(true)
			for tag := uint64(1); tag <= 5; tag++ {
				a.register(tag)
			}
			for tag := uint64(2); tag <= 5; tag++ { // 1 is still being handled
				f.handlerAcked(tag)
				ackExpectingFlush(t, a, tag, tag == 5)
			}
			if got, m, s := f.counts(); got != 4 || m != 0 || s != 4 {
				t.Fatalf("%d acked, %d multiple, %d single; want 4 single", got, m, s)
			}
			if f.acked[1] != 0 {
				t.Fatal("tag 1 acked")
			}
		})
	})
	t.Run("a full batch goes at once", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFakeChannel(10)
			a := newAcker(f, link{}, 4, time.Hour, 64, nil)
			defer a.flushAll(true)
			for tag := uint64(1); tag <= 4; tag++ {
				a.register(tag)
				f.handlerAcked(tag)
				ackExpectingFlush(t, a, tag, tag == 4)
			}
			if got, m, _ := f.counts(); got != 4 || m != 1 {
				t.Fatalf("%d acked with %d multiple acks; want 4 with 1", got, m)
			}
		})
	})
	t.Run("a nack sends the prefix first, alone", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFakeChannel(10)
			a := newAcker(f, link{}, 16, time.Hour, 64, nil)
			defer a.flushAll(true)
			for tag := uint64(1); tag <= 4; tag++ {
				a.register(tag)
			}
			for _, tag := range []uint64{1, 2, 4} {
				f.handlerAcked(tag)
				if _, err := a.ack(tag); err != nil {
					t.Fatal(err)
				}
			}
			if err := a.nack(3); err != nil {
				t.Fatal(err)
			}
			if got, m, _ := f.counts(); got != 2 || m != 1 || f.nacked[3] != 1 {
				t.Fatalf("after nack(3): %d acked (%d multiple), nacked %v; want 1-2 acked, 3 nacked", got, m, f.nacked)
			}
			// 3 is settled: the prefix now reaches 4.
			if err := a.flushAll(false); err != nil {
				t.Fatal(err)
			}
			if got, m, s := f.counts(); got != 3 || m != 1 || s != 1 {
				t.Fatalf("after flushAll: %d acked, %d multiple, %d single; want 3, 1, 1 (a prefix of one goes single)", got, m, s)
			}
		})
	})
}

// ackExpectingFlush acks tag, checks whether the ack asked for a flush,
// and flushes when it did.
func ackExpectingFlush(t *testing.T, a *acker, tag uint64, want bool) {
	t.Helper()
	flush, err := a.ack(tag)
	if err != nil || flush != want {
		t.Fatalf("ack(%d) = %v, %v; want %v, nil", tag, flush, err, want)
	}
	if flush {
		if err := a.flush(); err != nil {
			t.Fatal(err)
		}
	}
}

func (f *fakeChannel) count() int { n, _, _ := f.counts(); return n }

func (f *fakeChannel) counts() (acked, multiples, singles int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.acked), f.multiples, f.singles
}

func TestAddTagKeepsDisjointRanges(t *testing.T) {
	tests := []struct {
		name string
		in   []tagRange
		tag  uint64
		want []tagRange
	}{
		{"into nothing", nil, 5, []tagRange{{5, 5}}},
		{"after a range", []tagRange{{5, 6}}, 7, []tagRange{{5, 7}}},
		{"before a range", []tagRange{{5, 6}}, 4, []tagRange{{4, 6}}},
		{"joining two", []tagRange{{3, 4}, {6, 9}}, 5, []tagRange{{3, 9}}},
		{"apart", []tagRange{{3, 4}, {9, 9}}, 6, []tagRange{{3, 4}, {6, 6}, {9, 9}}},
		{"before all", []tagRange{{3, 4}}, 1, []tagRange{{1, 1}, {3, 4}}},
		{"after all", []tagRange{{3, 4}}, 9, []tagRange{{3, 4}, {9, 9}}},
		{"inside", []tagRange{{3, 6}}, 4, []tagRange{{3, 6}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := addTag(slices.Clone(tt.in), tt.tag)
			if !slices.Equal(got, tt.want) {
				t.Errorf("addTag(%v, %d) = %v; want %v", tt.in, tt.tag, got, tt.want)
			}
		})
	}
}

// TestAckBatchFollowsPrefetch pins how NewSource settles the batch: 16 by
// default (coalescing is on, issue 15), at most a quarter of the prefetch
// (waiting acks hold prefetch slots), and none below a prefetch of 8, where
// it would only add delay.
func TestAckBatchFollowsPrefetch(t *testing.T) {
	tests := []struct {
		prefetch, batch int
		want            int
	}{
		{0, 0, 8}, // on by default (issue 15), a quarter of the default prefetch 32
		{64, 0, 16},
		{0, 16, 8}, // the default prefetch, 32
		{1000, 16, 16},
		{64, 4, 4},
		{64, 40, 16},
		{7, 16, 1},
		{1, 0, 1},
		{64, 1, 1},
	}
	for _, tt := range tests {
		cfg := Config{Queue: "q", Prefetch: tt.prefetch, AckBatch: tt.batch}
		if err := cfg.resolve(); err != nil {
			t.Fatal(err)
		}
		if cfg.AckBatch != tt.want || cfg.AckDelay != defaultAckDelay {
			t.Errorf("Config{Prefetch: %d, AckBatch: %d}: AckBatch %d, AckDelay %v; want %d, %v",
				tt.prefetch, tt.batch, cfg.AckBatch, cfg.AckDelay, tt.want, defaultAckDelay)
		}
	}
}

// blockingWriter is a fakeChannel whose first write blocks until release
// is closed: a write in progress.
type blockingWriter struct {
	*fakeChannel
	once    sync.Once
	entered chan struct{}
	release chan struct{}
}

func (b *blockingWriter) Ack(tag uint64, multiple bool) error {
	b.once.Do(func() { close(b.entered); <-b.release })
	return b.fakeChannel.Ack(tag, multiple)
}

// TestAckerStarvingFlushMeetsAWriteInProgress (issue 15): a worker that
// starves (its Receive found nothing buffered, and the waiting acks hold
// the credit it needs) finds another flush writing. It must not wait for
// that write, and its acks must not wait for the delay either: the writer
// sends them when its own write is done.
func TestAckerStarvingFlushMeetsAWriteInProgress(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &blockingWriter{fakeChannel: newFakeChannel(10), entered: make(chan struct{}), release: make(chan struct{})}
		a := newAcker(f, link{}, 2, time.Hour, 3, nil)
		defer a.flushAll(true)
		for tag := uint64(1); tag <= 4; tag++ {
			a.register(tag)
			f.handlerAcked(tag)
		}
		for _, tag := range []uint64{1, 2} {
			flush, err := a.ack(tag)
			if err != nil {
				t.Fatal(err)
			}
			if flush {
				go a.flush() // writes 1-2 and blocks
			}
		}
		<-f.entered
		if flush, err := a.ack(3); flush || err != nil {
			t.Fatalf("ack(3) = %v, %v; want false, nil (tags 3 and 4 held, prefetch 3: a slot free)", flush, err)
		}
		a.wait() // tags 3 and 4 held, 1 idle Receive, prefetch 3: starving
		defer a.unidle()
		if f.count() != 0 {
			t.Fatalf("%d acked while the first write blocks; want 0", f.count())
		}
		close(f.release)
		synctest.Wait()
		if got := f.acked[3]; got != 1 {
			t.Fatalf("tag 3 acked %d times after the write in progress ended; want 1 (at once, not after the delay)", got)
		}
		if got := f.count(); got != 3 {
			t.Fatalf("%d acked; want 3 (tags 1-3)", got)
		}
	})
}
