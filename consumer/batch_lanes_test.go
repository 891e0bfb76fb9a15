package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// laneSource is a broker.BatchReceiver whose deliveries are
// broker.Sequenced, handing out the batches it was given, one per
// ReceiveBatch, and recording how each delivery was settled.
type laneSource struct {
	mu      sync.Mutex
	batches [][]*laneDelivery
	settled map[string]string // message ID → ack, requeue, release, dead
	extra   int               // ReceiveBatch returns this many more than asked
}

type laneDelivery struct {
	src   *laneSource
	msg   broker.Message
	lane  uint64
	panic bool // Lane panics
}

func (s *laneSource) Receive(ctx context.Context) (broker.Delivery, error) {
	return nil, errors.New("laneSource: Receive called; the runtime should use ReceiveBatch")
}

func (s *laneSource) ReceiveBatch(ctx context.Context, max int, wait time.Duration) ([]broker.Delivery, error) {
	s.mu.Lock()
	if len(s.batches) == 0 {
		s.mu.Unlock()
		<-ctx.Done()
		return nil, ctx.Err()
	}
	b := s.batches[0]
	s.batches = s.batches[1:]
	s.mu.Unlock()
	ds := make([]broker.Delivery, 0, len(b))
	for _, d := range b {
		ds = append(ds, d)
	}
	for i := 0; i < s.extra; i++ {
		ds = append(ds, &laneDelivery{src: s, msg: broker.Message{ID: fmt.Sprintf("extra%d", i), Attempt: 1}})
	}
	return ds, nil
}

func (s *laneSource) Close(context.Context) error { return nil }

func (s *laneSource) outcome(id string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.settled[id]
}

func (s *laneSource) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.settled)
}

func (d *laneDelivery) set(how string) error {
	d.src.mu.Lock()
	defer d.src.mu.Unlock()
	d.src.settled[d.msg.ID] = how
	return nil
}

func (d *laneDelivery) Message() *broker.Message  { return &d.msg }
func (d *laneDelivery) Ack(context.Context) error { return d.set("ack") }
func (d *laneDelivery) Requeue(context.Context) error {
	return d.set("requeue")
}
func (d *laneDelivery) Release(context.Context) error { return d.set("release") }
func (d *laneDelivery) DeadLetter(context.Context, broker.Reason) error {
	return d.set("dead")
}
func (d *laneDelivery) Lane() uint64 {
	if d.panic {
		panic("lane unknown")
	}
	return d.lane
}

func newLaneSource(lanes ...uint64) *laneSource {
	s := &laneSource{settled: map[string]string{}}
	var b []*laneDelivery
	for i, l := range lanes {
		b = append(b, &laneDelivery{src: s, msg: broker.Message{ID: fmt.Sprintf("m%d", i), Attempt: 1}, lane: l})
	}
	s.batches = [][]*laneDelivery{b}
	return s
}

// After a failed delivery, the later deliveries of its lane in the batch are
// given back (Release), handled or not; earlier ones and other lanes' are
// settled by their own outcomes. (A delivery whose Lane panics fails the
// run: TestBatchPanickingLaneFailsTheRun.)
func TestBatchLaneRule(t *testing.T) {
	src := newLaneSource(1, 1, 2, 1, 2, 3, 4)
	h := consumer.BatchHandlerFunc(func(ctx context.Context, msgs []*broker.Message) error {
		return consumer.BatchFailures(map[int]error{0: errors.New("lane 1 fails"), 4: errors.New("lane 2 fails")})
	})
	c, err := consumer.NewBatch(src, h, consumer.Batch{MaxSize: 10}, consumer.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	runBatch(t, c, func() bool { return src.count() == 7 })
	want := []string{"requeue", "release", "ack", "release", "requeue", "ack", "ack"}
	for i, w := range want {
		if got := src.outcome(fmt.Sprintf("m%d", i)); got != w {
			t.Errorf("m%d settled with %s; want %s", i, got, w)
		}
	}
}

// A source that returns more deliveries than asked is broken: the run fails
// with a fatal error, and every delivery is given back.
func TestBatchSourceReturningTooMany(t *testing.T) {
	src := newLaneSource(1, 2)
	src.extra = 2
	h := consumer.BatchHandlerFunc(func(ctx context.Context, msgs []*broker.Message) error { return nil })
	c, err := consumer.NewBatch(src, h, consumer.Batch{MaxSize: 3}, consumer.WithLogger(quiet),
		consumer.WithDrainTimeout(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	err = c.Run(context.Background())
	if !broker.IsFatal(err) {
		t.Fatalf("Run = %v; want a fatal error", err)
	}
	for _, id := range []string{"m0", "m1", "extra0", "extra1"} {
		if got := src.outcome(id); got != "release" {
			t.Errorf("%s settled with %q; want release", id, got)
		}
	}
}
