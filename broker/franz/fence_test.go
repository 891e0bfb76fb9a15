package franz_test

import (
	"context"
	"errors"
	"sort"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/franz"
)

// TestDeliveryOutlivingItsPartitionIsFenced: a member holds one delivery
// of each of the topic's partitions, unsettled, when a second member
// joins. The cooperative rebalance moves some partitions; the first
// member's drain (RebalanceDrainTimeout) ends with their deliveries still
// out, so they are fenced: Ack returns ErrStaleDelivery, their Lease is
// cancelled, their offset is not committed, and the new owner gets the
// record. The deliveries of the partitions that stayed are acked as usual.
// Kafka protocol (in-process kfake cluster).
func TestDeliveryOutlivingItsPartitionIsFenced(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, "fence", partitions)
	const group = "g-fence"
	offsets := map[int32]int64{}
	for p := range int32(partitions) {
		offsets[p] = e.produceTo(t, topic, p, "held")
	}
	cfg := e.config(topic, group)
	cfg.RebalanceDrainTimeout = 200 * time.Millisecond
	a := newSource(t, cfg)
	held := map[int32]broker.Delivery{}
	for range partitions {
		d := receive(t, a)
		p, off := partitionOf(t, d.Message().ID)
		if off != offsets[p] {
			t.Fatalf("member A received %s; want offset %d of partition %d", d.Message().ID, offsets[p], p)
		}
		held[p] = d
	}

	b := newSource(t, cfg)
	// B gets the records of the partitions it takes over, once A's drain
	// gave them up.
	var moved []int32
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for len(moved) < partitions/2 {
		d, err := b.Receive(ctx)
		if err != nil {
			t.Fatalf("member B received %d records of moved partitions, then Receive = %v", len(moved), err)
		}
		p, off := partitionOf(t, d.Message().ID)
		if off != offsets[p] {
			t.Fatalf("member B received %s; want the record A held, offset %d", d.Message().ID, offsets[p])
		}
		moved = append(moved, p)
		if err := d.Ack(ctx); err != nil {
			t.Fatalf("B: Ack(%s) = %v", d.Message().ID, err)
		}
	}
	sort.Slice(moved, func(i, j int) bool { return moved[i] < moved[j] })
	t.Logf("partitions moved to B: %v", moved)
	isMoved := map[int32]bool{}
	for _, p := range moved {
		isMoved[p] = true
	}
	for p, d := range held {
		lease := d.(broker.Leased).Lease()
		err := d.Ack(ctx)
		if !isMoved[p] {
			if err != nil || lease.Err() != nil {
				t.Errorf("partition %d stayed with A: Ack = %v, Lease().Err() = %v; want nil, nil", p, err, lease.Err())
			}
			continue
		}
		if !errors.Is(err, broker.ErrStaleDelivery) {
			t.Errorf("partition %d moved to B: A's late Ack(%s) = %v; want ErrStaleDelivery", p, d.Message().ID, err)
		}
		if lease.Err() == nil {
			t.Errorf("partition %d moved to B: A's delivery's Lease is not cancelled", p)
		}
	}
	// The stale Ack committed nothing: B's acks commit the moved records;
	// before that, the committed offset of a moved partition was at most
	// the held record's. Close B and A to make their final commits.
	for _, s := range []*franz.Source{b, a} {
		if err := s.Close(ctx); err != nil {
			t.Fatalf("Close = %v", err)
		}
	}
	got := e.committed(t, group, topic)
	for p := range int32(partitions) {
		if got[p] != offsets[p]+1 {
			t.Errorf("partition %d: committed %d; want %d (the held record handled once, by its owner)", p, got[p], offsets[p]+1)
		}
	}
}

// TestLateAckAfterRevokeDoesNotCommit checks the fence from the commit
// side: the delivery fenced at a rebalance is acked late, and the new
// owner, which has not acked it, closes: the committed offset stays at the
// record. Kafka protocol (in-process kfake cluster).
func TestLateAckAfterRevokeDoesNotCommit(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, "fence-commit", 1)
	const group = "g-fence-commit"
	off := e.produceTo(t, topic, 0, "held")
	cfg := e.config(topic, group)
	cfg.RebalanceDrainTimeout = 200 * time.Millisecond
	a := newSource(t, cfg)
	d := receive(t, a)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// A leaves with the delivery unsettled (Close does not wait for it):
	// its partition goes to B.
	b := newSource(t, cfg)
	if err := a.Close(ctx); err != nil {
		t.Fatalf("A: Close = %v", err)
	}
	if err := d.Ack(ctx); !errors.Is(err, broker.ErrStaleDelivery) {
		t.Fatalf("Ack after the partition went away = %v; want ErrStaleDelivery", err)
	}
	if err := d.(broker.Leased).Lease().Err(); err == nil {
		t.Fatal("the fenced delivery's Lease is not cancelled")
	}
	d2 := receive(t, b)
	if _, o := partitionOf(t, d2.Message().ID); o != off {
		t.Fatalf("B received %s; want offset %d", d2.Message().ID, off)
	}
	if err := b.Close(ctx); err != nil { // d2 unsettled: not committed
		t.Fatalf("B: Close = %v", err)
	}
	if got := e.committed(t, group, topic); got[0] > off {
		t.Fatalf("committed offset %d after a stale Ack and an unsettled redelivery; want at most %d", got[0], off)
	}
}

// TestLostPartitionsAreFencedAtOnce: the coordinator answers a heartbeat
// with UNKNOWN_MEMBER_ID (the member was expelled, as after a session
// expiry): kgo reports the partitions lost. The Source fences what is out
// at once (stale Ack, Lease cancelled), commits nothing for it, emits
// EventReconnecting wrapping ErrPartitionsLost, rejoins, and hands the
// record out again. Kafka protocol (in-process kfake cluster, its request
// control injecting the heartbeat error).
func TestLostPartitionsAreFencedAtOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, "lost", 1)
	const group = "g-lost"
	off := e.produceTo(t, topic, 0, "held")
	src := newSource(t, e.config(topic, group))
	events := make(chan broker.Event, 16)
	src.SetEventHook(func(ev broker.Event) {
		select {
		case events <- ev:
		default:
		}
	})
	d := receive(t, src)
	e.cluster.ControlKey(int16(kmsg.Heartbeat), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		req := kreq.(*kmsg.HeartbeatRequest)
		if req.Group != group {
			e.cluster.KeepControl()
			return nil, nil, false
		}
		resp := req.ResponseKind().(*kmsg.HeartbeatResponse)
		resp.ErrorCode = kerr.UnknownMemberID.Code
		return resp, nil, true
	})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	select {
	case <-d.(broker.Leased).Lease().Done():
	case <-ctx.Done():
		t.Fatal("the delivery's Lease was not cancelled after the member was expelled")
	}
	if err := d.Ack(ctx); !errors.Is(err, broker.ErrStaleDelivery) {
		t.Fatalf("Ack after the partitions were lost = %v; want ErrStaleDelivery", err)
	}
	lost := false
	for !lost {
		select {
		case ev := <-events:
			lost = ev.Kind == broker.EventReconnecting && errors.Is(ev.Err, franz.ErrPartitionsLost)
			t.Logf("event %v: %v", ev.Kind, ev.Err)
		case <-ctx.Done():
			t.Fatal("no EventReconnecting wrapping ErrPartitionsLost")
		}
	}
	again := receive(t, src)
	if _, o := partitionOf(t, again.Message().ID); o != off {
		t.Fatalf("after rejoining, received %s; want offset %d again", again.Message().ID, off)
	}
	if got := e.committed(t, group, topic); got[0] > off {
		t.Fatalf("committed %d after a stale Ack; want at most %d", got[0], off)
	}
	if err := again.Ack(ctx); err != nil {
		t.Fatalf("Ack of the redelivery = %v", err)
	}
}
