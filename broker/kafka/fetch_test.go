package kafka_test

import (
	"context"
	"errors"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// The Source fetches each partition with requests of its own. When a fetch
// fails — the broker answers NotLeaderForPartition, or the connection
// breaks — the fetcher tries again at the partition's leader and carries on
// from the next offset it has not queued: every record is handled exactly
// once and the committed offsets reach the end.
func TestFetchErrorsReconnectAndLoseOrRepeatNothing(t *testing.T) {
	e := newEnv(t)
	e.needKfake(t)
	t.Logf("running against %s", e.what)
	topic := e.topic(t, "fetcherr")
	const n = 2000
	// In batches of 8: a fetch returns at least one whole record batch,
	// whatever MaxBytes says, so big batches would be fetched in one go.
	for i := 0; i < n; i += 8 {
		e.produce(t, topic, i, 8, func(i int) string { return "k" + strconv.Itoa(i) })
	}

	l := newLedger()
	cfg := e.config(topic, "g-fetcherr")
	// Many small fetches, each only when records were handled, so that the
	// faults land mid-stream.
	cfg.MaxBytes = 512
	cfg.MaxInFlight = 8
	m := startMember(t, newSource(t, cfg), consumer.HandlerFunc(func(_ context.Context, msg *broker.Message) error {
		time.Sleep(100 * time.Microsecond)
		l.add(msg.ID)
		return nil
	}), consumer.WithConcurrency(4))
	waitFor(t, "some records handled", 20*time.Second, func() bool { return l.distinct() > 100 })

	// The next 3 fetches get NotLeaderForPartition on every partition, the 2
	// after them a closed connection; then the cluster serves fetches again.
	var notLeader, dropped atomic.Int64
	var seq atomic.Int64
	e.cluster.ControlKey(int16(kmsg.Fetch), func(req kmsg.Request) (kmsg.Response, error, bool) {
		i := seq.Add(1)
		if i > 5 {
			return nil, nil, false // dropped after this call: fetches are served again
		}
		e.cluster.KeepControl()
		if i > 3 {
			dropped.Add(1)
			return nil, errors.New("injected: connection dropped"), true
		}
		notLeader.Add(1)
		r := req.(*kmsg.FetchRequest)
		resp := r.ResponseKind().(*kmsg.FetchResponse)
		resp.SetVersion(r.GetVersion())
		for _, rt := range r.Topics {
			st := kmsg.NewFetchResponseTopic()
			st.Topic = rt.Topic
			for _, rp := range rt.Partitions {
				sp := kmsg.NewFetchResponseTopicPartition()
				sp.Partition = rp.Partition
				sp.ErrorCode = kerr.NotLeaderForPartition.Code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
	waitFor(t, "every record handled", 60*time.Second, func() bool { return l.distinct() == n })
	m.stop(t)

	t.Logf("injected %d NotLeaderForPartition answers and %d dropped connections; %d records handled, %d duplicates",
		notLeader.Load(), dropped.Load(), l.distinct(), l.duplicates())
	if notLeader.Load() != 3 || dropped.Load() != 2 {
		t.Fatalf("injected %d NotLeaderForPartition and %d drops; want 3 and 2 (the faults did not land)", notLeader.Load(), dropped.Load())
	}
	if d := l.duplicates(); d != 0 {
		t.Errorf("duplicates = %d; want 0", d)
	}
	end, got := e.endOffsets(t, topic), e.committed(t, "g-fetcherr", topic)
	for p := range partitions {
		if got[p] != end[p] {
			t.Errorf("partition %d: committed = %d; want end offset %d", p, got[p], end[p])
		}
	}
}

// A fetch at the end of a partition waits up to MaxWait for new records.
// Close does not wait for it: ending the generation cancels the pending
// fetches. MaxWait here is 4 s; Close of a caught-up Source returns far
// sooner (the bound is generous on purpose, for a loaded machine).
func TestCloseDoesNotWaitForAPendingFetch(t *testing.T) {
	e := newEnv(t)
	t.Logf("running against %s", e.what)
	topic := e.topic(t, "closefast")
	e.produce(t, topic, 0, 8, func(i int) string { return "k" + strconv.Itoa(i) })
	cfg := e.config(topic, "g-closefast")
	cfg.SessionTimeout, cfg.RebalanceTimeout, cfg.RebalanceDrainTimeout = 10*time.Second, 10*time.Second, 5*time.Second
	cfg.MaxWait = 4 * time.Second
	src := newSource(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for range 8 {
		d, err := src.Receive(ctx)
		if err != nil {
			t.Fatalf("Receive: %v", err)
		}
		if err := d.Ack(ctx); err != nil {
			t.Fatalf("Ack: %v", err)
		}
	}
	time.Sleep(200 * time.Millisecond) // the fetchers now wait at the end of their partitions
	start := time.Now()
	if err := src.Close(context.Background()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	took := time.Since(start)
	t.Logf("Close of a caught-up Source took %v (MaxWait %v)", took, cfg.MaxWait)
	if took >= cfg.MaxWait/2 {
		t.Errorf("Close took %v; it waited for a pending fetch (MaxWait %v)", took, cfg.MaxWait)
	}
	end, got := e.endOffsets(t, topic), e.committed(t, "g-closefast", topic)
	for p := range partitions {
		if got[p] != end[p] {
			t.Errorf("partition %d: committed = %d; want end offset %d", p, got[p], end[p])
		}
	}
}

// Kafka protocol (in-process kfake cluster of 3 brokers): partition leaders
// moved while the group consumes. The fetches follow the new leaders (the
// fetch transport refreshes its view of them every second): every record
// is handled, none twice, and the committed offsets reach the end.
func TestFetchFollowsMovedPartitionLeaders(t *testing.T) {
	if os.Getenv("QUEUEKIT_KAFKA_BROKERS") != "" {
		t.Skip("needs kfake's MoveTopicPartition; skipped against a real cluster")
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(3), kfake.GroupMinSessionTimeout(100*time.Millisecond))
	if err != nil {
		t.Fatalf("kfake.NewCluster: %v", err)
	}
	t.Cleanup(c.Close)
	e := &env{brokers: c.ListenAddrs(), cluster: c, what: "Kafka protocol (in-process kfake cluster, 3 brokers)"}
	topic := e.topic(t, "leadermove")
	const n = 2000
	for i := 0; i < n; i += 8 {
		e.produce(t, topic, i, 8, func(i int) string { return "k" + strconv.Itoa(i) })
	}
	l := newLedger()
	cfg := e.config(topic, "g-leadermove")
	cfg.MaxBytes = 512 // many small fetches, so that the moves land mid-stream
	cfg.MaxInFlight = 8
	m := startMember(t, newSource(t, cfg), consumer.HandlerFunc(func(_ context.Context, msg *broker.Message) error {
		time.Sleep(200 * time.Microsecond)
		l.add(msg.ID)
		return nil
	}), consumer.WithConcurrency(4))
	waitFor(t, "some records handled", 20*time.Second, func() bool { return l.distinct() > 100 })
	moved := 0
	for p := range int32(partitions) {
		to := (c.LeaderFor(topic, p) + 1) % 3
		if err := c.MoveTopicPartition(topic, p, to); err != nil {
			t.Fatalf("MoveTopicPartition(%d → %d): %v", p, to, err)
		}
		moved++
	}
	waitFor(t, "every record handled", 60*time.Second, func() bool { return l.distinct() == n })
	m.stop(t)
	t.Logf("moved %d partition leaders mid-stream; %d records handled, %d duplicates", moved, l.distinct(), l.duplicates())
	if d := l.duplicates(); d != 0 {
		t.Errorf("duplicates = %d; want 0", d)
	}
	end, got := e.endOffsets(t, topic), e.committed(t, "g-leadermove", topic)
	for p := range partitions {
		if got[p] != end[p] {
			t.Errorf("partition %d: committed = %d; want end offset %d", p, got[p], end[p])
		}
	}
}
