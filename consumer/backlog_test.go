package consumer_test

import (
	"context"
	"errors"
	"maps"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// backlogSource is a source that only reports a backlog: each call of
// Backlog counts, and answers with answer (or blocks until its context
// ends, when hang is set).
type backlogSource struct {
	calls  atomic.Int64
	mu     sync.Mutex
	answer broker.Backlog
	err    error
	hang   bool
}

func (s *backlogSource) Receive(ctx context.Context) (broker.Delivery, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

func (s *backlogSource) Close(context.Context) error { return nil }

func (s *backlogSource) Backlog(ctx context.Context) (broker.Backlog, error) {
	s.calls.Add(1)
	if _, ok := ctx.Deadline(); !ok {
		return broker.Backlog{}, errors.New("Backlog called without a deadline")
	}
	s.mu.Lock()
	answer, err, hang := s.answer, s.err, s.hang
	s.mu.Unlock()
	if hang {
		<-ctx.Done()
		return broker.Backlog{}, ctx.Err()
	}
	return answer, err
}

func (s *backlogSource) set(answer broker.Backlog, err error) {
	s.mu.Lock()
	s.answer, s.err = answer, err
	s.mu.Unlock()
}

func newBacklogConsumer(t *testing.T, src broker.Source) *consumer.Consumer {
	t.Helper()
	c, err := consumer.New(src, consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil }), consumer.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Issue 10 item 3: the broker is asked at most once per BacklogInterval,
// however many callers ask and however often; callers asking at once share
// one call; a failed call is reused for a second only.
func TestBacklogAsksTheBrokerOncePerInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := &backlogSource{answer: broker.Backlog{Messages: 12, Consumers: -1, Partitions: map[int]int64{0: 5, 1: 7}}}
		c := newBacklogConsumer(t, src)
		ctx := context.Background()

		var wg sync.WaitGroup
		for range 20 {
			wg.Go(func() {
				b, err := c.Backlog(ctx)
				if err != nil || b.Messages != 12 || b.Partitions[1] != 7 {
					t.Errorf("Backlog() = %+v, %v; want 12 messages, partition 1 at 7", b, err)
				}
				b.Partitions[0] = 999 // each caller has its own map
			})
		}
		wg.Wait()
		if n := src.calls.Load(); n != 1 {
			t.Fatalf("20 concurrent callers made %d broker calls; want 1", n)
		}
		time.Sleep(consumer.BacklogInterval - time.Millisecond)
		if b, _ := c.Backlog(ctx); b.Partitions[0] != 5 {
			t.Errorf("cached partition 0 = %d after a caller changed its copy; want 5", b.Partitions[0])
		}
		if n := src.calls.Load(); n != 1 {
			t.Fatalf("within the interval: %d broker calls; want 1", n)
		}
		time.Sleep(time.Millisecond)
		src.set(broker.Backlog{}, errors.New("channel closed"))
		if _, err := c.Backlog(ctx); err == nil || src.calls.Load() != 2 {
			t.Fatalf("after the interval: error %v, %d calls; want the broker's error from a second call", err, src.calls.Load())
		}
		// An error is shared for a second, not for the whole interval.
		time.Sleep(time.Second - time.Millisecond)
		if _, err := c.Backlog(ctx); err == nil || src.calls.Load() != 2 {
			t.Fatalf("within a second of an error: error %v, %d calls; want the same error, 2 calls", err, src.calls.Load())
		}
		time.Sleep(time.Millisecond)
		src.set(broker.Backlog{Messages: 3}, nil)
		if b, err := c.Backlog(ctx); err != nil || b.Messages != 3 || src.calls.Load() != 3 {
			t.Fatalf("a second after an error: %+v, %v, %d calls; want 3 messages from a third call", b, err, src.calls.Load())
		}
	})
}

// A broker that does not answer holds no caller past the call's 2 s bound,
// nor past the caller's own context; a caller that went away does not make
// its cancellation the answer of the others.
func TestBacklogIsBoundedAndNotCancelledByACaller(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := &backlogSource{hang: true}
		c := newBacklogConsumer(t, src)

		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		if _, err := c.Backlog(ctx); !errors.Is(err, context.DeadlineExceeded) || time.Since(start) != 100*time.Millisecond {
			t.Errorf("Backlog(ctx with 100ms) = %v after %v; want its deadline after 100ms", err, time.Since(start))
		}
		// The call goes on for the next caller, bounded by its own 2 s.
		_, err := c.Backlog(context.Background())
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) != 2*time.Second || src.calls.Load() != 1 {
			t.Errorf("Backlog() = %v after %v, %d calls; want the call's deadline after 2s, 1 call", err, time.Since(start), src.calls.Load())
		}
	})
}

func TestBacklogOfASourceWithoutOne(t *testing.T) {
	c := newBacklogConsumer(t, &chanSource{})
	if _, err := c.Backlog(context.Background()); !errors.Is(err, consumer.ErrNoBacklog) {
		t.Errorf("Backlog() of a source that is no BacklogReporter = %v; want ErrNoBacklog", err)
	}
}

// Review round 3, item 9: a source may answer with negative numbers (a
// Kafka lag read while a commit overtakes the high watermark it read): they
// are clamped, a negative lag to 0 and a negative consumer count to -1 (not
// known), and the total is the sum of the clamped partitions.
func TestBacklogClampsNegativeAnswers(t *testing.T) {
	src := &backlogSource{answer: broker.Backlog{Messages: -3, Consumers: -7, Partitions: map[int]int64{0: -5, 1: 2}}}
	c := newBacklogConsumer(t, src)
	got, err := c.Backlog(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := broker.Backlog{Messages: 2, Consumers: -1, Partitions: map[int]int64{0: 0, 1: 2}}
	if got.Messages != want.Messages || got.Consumers != want.Consumers || !maps.Equal(got.Partitions, want.Partitions) {
		t.Errorf("Backlog() = %+v; want %+v", got, want)
	}
	src2 := &backlogSource{answer: broker.Backlog{Messages: -1, Consumers: 0}}
	if got, err := newBacklogConsumer(t, src2).Backlog(context.Background()); err != nil || got.Messages != 0 || got.Consumers != 0 {
		t.Errorf("Backlog() of a queue answering -1 messages = %+v, %v; want 0 messages", got, err)
	}
}

// Review round 3, item 9: a call whose ctx is already done returns its
// error without asking the broker.
func TestBacklogWithADoneContextAsksNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := &backlogSource{answer: broker.Backlog{Messages: 1}}
		c := newBacklogConsumer(t, src)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := c.Backlog(ctx); !errors.Is(err, context.Canceled) {
			t.Errorf("Backlog(done ctx) = %v; want context.Canceled", err)
		}
		synctest.Wait() // a call wrongly started has reached the source
		if n := src.calls.Load(); n != 0 {
			t.Errorf("Backlog(done ctx) asked the broker %d times; want 0", n)
		}
	})
}
