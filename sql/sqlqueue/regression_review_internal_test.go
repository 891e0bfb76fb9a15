package sqlqueue

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/sql/internal/sqltest"
	"github.com/queuekit/queuekit/sql/sqldb"
)

// Issue 12 review R5: a delivery that went stale by its fence before it was
// in the buffer, or while handed out, frees its prefetch slot: Receive does
// not hand out a fenced delivery, and settling a stale delivery removes it
// from what the source holds.
func TestIssue12ReviewR5_StaleDeliveryFreesPrefetchSlot(t *testing.T) {
	ctx := context.Background()
	db, _, err := sqldb.Open("sqlite:" + sqltest.SQLitePath(t))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := Migrate(ctx, db, ""); err != nil {
		t.Fatal(err)
	}
	p, err := NewPublisher(db, PublisherConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(ctx)
	if err := p.Publish(ctx, "q", &broker.Message{Body: []byte("a")}, &broker.Message{Body: []byte("b")}); err != nil {
		t.Fatal(err)
	}
	s, err := NewSource(db, Config{Queue: "q", Prefetch: 2, Visibility: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	ds, err := s.claim(2)
	if err != nil || len(ds) != 2 {
		t.Fatalf("claim = %d, %v", len(ds), err)
	}
	// Fenced at once: the first as if its fence passed before the claim
	// returned, the second while handed out.
	for _, d := range ds {
		d.fence.Store(0)
	}
	ds[0].checkFence()
	s.mu.Lock()
	s.started = true // no background goroutines: the test drives the source
	s.buf = append(s.buf, ds[0])
	s.out[ds[1]] = struct{}{}
	s.mu.Unlock()
	ds[1].checkFence()
	s.mu.Lock()
	s.out[ds[1]] = struct{}{} // as if Receive handed it out after its fence
	s.mu.Unlock()
	if err := ds[1].Ack(ctx); !errors.Is(err, broker.ErrStaleDelivery) {
		t.Errorf("Ack of a fenced delivery = %v; want ErrStaleDelivery", err)
	}
	rctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	s.mu.Lock()
	s.fetching = true // no new claim: only what the source holds
	s.mu.Unlock()
	if d, err := s.Receive(rctx); err == nil {
		t.Errorf("Receive handed out %q, a stale delivery", d.Message().Body)
	}
	s.mu.Lock()
	held := len(s.buf) + len(s.out)
	s.fetching = false
	s.mu.Unlock()
	if held != 0 {
		t.Errorf("the source holds %d stale deliveries; want 0 (their prefetch slots are lost)", held)
	}
}
