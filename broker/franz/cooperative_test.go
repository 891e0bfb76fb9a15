package franz_test

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/franz"
)

// handling is one record handled by a member.
type handling struct {
	member    string
	partition int32
	offset    int64
	at        time.Time
}

// member consumes with Receive and Ack until its Source closes, and logs
// what it handled.
type member struct {
	name string
	src  *franz.Source
	mu   *sync.Mutex
	log  *[]handling
	done chan struct{}
}

func startMember(t *testing.T, name string, src *franz.Source, mu *sync.Mutex, log *[]handling) *member {
	m := &member{name: name, src: src, mu: mu, log: log, done: make(chan struct{})}
	go func() {
		defer close(m.done)
		for {
			d, err := src.Receive(context.Background())
			if err != nil {
				if !errors.Is(err, broker.ErrSourceClosed) {
					t.Errorf("%s: Receive = %v", name, err)
				}
				return
			}
			p, off := partitionOf(t, d.Message().ID)
			time.Sleep(200 * time.Microsecond) // some work
			if err := d.Ack(context.Background()); err != nil {
				if errors.Is(err, broker.ErrStaleDelivery) {
					continue // fenced: the partition's next owner handles it
				}
				t.Errorf("%s: Ack(%s) = %v", name, d.Message().ID, err)
				continue
			}
			mu.Lock()
			*log = append(*log, handling{member: name, partition: p, offset: off, at: time.Now()})
			mu.Unlock()
		}
	}()
	return m
}

// TestCooperativeRebalanceKeepsUnmovedPartitionsFlowing: two members
// consume a 6-partition topic that a producer keeps writing to; a third
// joins. With the default cooperative-sticky balancer only the partitions
// that move to the third are drained; the members that keep partitions go
// on handling them while the third joins (an eager balancer would stop
// them all). Nothing is lost, and nothing committed is handled twice: a
// record handled twice must be one its first handler had not committed
// when its partition moved, which the drain (commit before revoke) rules
// out here, so the test wants none. Kafka protocol (in-process kfake
// cluster).
func TestCooperativeRebalanceKeepsUnmovedPartitionsFlowing(t *testing.T) {
	t.Parallel()
	const parts = 6
	e := newEnv(t)
	topic := e.topic(t, "cooperative", parts)
	cfg := e.config(topic, "g-cooperative")

	// The producer writes a record to each partition every 2 ms.
	produced := map[int32]int64{} // partition -> records produced
	stopProduce := make(chan struct{})
	produceDone := make(chan struct{})
	go func() {
		defer close(produceDone)
		for i := 0; ; i++ {
			select {
			case <-stopProduce:
				return
			case <-time.After(2 * time.Millisecond):
			}
			var recs []*kgo.Record
			for p := range int32(parts) {
				recs = append(recs, &kgo.Record{Topic: topic, Partition: p, Value: []byte(strconv.Itoa(i))})
			}
			if err := e.manual.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
				t.Errorf("produce: %v", err)
				return
			}
			for p := range int32(parts) {
				produced[p]++
			}
		}
	}()

	var (
		mu  sync.Mutex
		log []handling
	)
	members := []*member{
		startMember(t, "A", newSource(t, cfg), &mu, &log),
		startMember(t, "B", newSource(t, cfg), &mu, &log),
	}
	// Let A and B settle into a generation and consume for a while.
	waitFor(t, "A and B both handle records", func() bool {
		mu.Lock()
		defer mu.Unlock()
		seen := map[string]bool{}
		for _, h := range log[max(0, len(log)-200):] {
			seen[h.member] = true
		}
		return seen["A"] && seen["B"] && len(log) > 600
	})
	owners := func(from, to time.Time) map[string]map[int32]int {
		mu.Lock()
		defer mu.Unlock()
		out := map[string]map[int32]int{}
		for _, h := range log {
			if h.at.Before(from) || !h.at.Before(to) {
				continue
			}
			if out[h.member] == nil {
				out[h.member] = map[int32]int{}
			}
			out[h.member][h.partition]++
		}
		return out
	}
	joinAt := time.Now()
	before := owners(joinAt.Add(-300*time.Millisecond), joinAt)
	members = append(members, startMember(t, "C", newSource(t, cfg), &mu, &log))
	var cFirst time.Time
	waitFor(t, "C handles records", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, h := range log {
			if h.member == "C" {
				cFirst = h.at
				return true
			}
		}
		return false
	})
	window := owners(joinAt, cFirst)
	time.Sleep(300 * time.Millisecond)
	after := owners(time.Now().Add(-200*time.Millisecond), time.Now())
	t.Logf("partitions handled in the 300 ms before C joined: %v", before)
	t.Logf("records handled per member and partition while C joined (%v, until C's first record): %v",
		cFirst.Sub(joinAt).Round(time.Millisecond), window)
	t.Logf("partitions handled in the last 200 ms: %v", after)
	for _, name := range []string{"A", "B"} {
		kept := 0
		for p := range before[name] {
			if after[name][p] > 0 {
				kept += window[name][p]
			}
		}
		if kept == 0 {
			t.Errorf("member %s handled no record of the partitions it kept while C joined; want the unmoved partitions to keep flowing (cooperative rebalancing)", name)
		}
	}

	close(stopProduce)
	<-produceDone
	total := int64(0)
	for _, n := range produced {
		total += n
	}
	waitFor(t, fmt.Sprintf("the %d records produced are all handled", total), func() bool {
		mu.Lock()
		defer mu.Unlock()
		seen := map[[2]int64]bool{}
		for _, h := range log {
			seen[[2]int64{int64(h.partition), h.offset}] = true
		}
		return int64(len(seen)) >= total
	})
	for _, m := range members {
		if err := m.src.Close(context.Background()); err != nil {
			t.Errorf("%s: Close = %v", m.name, err)
		}
		<-m.done
	}
	mu.Lock()
	defer mu.Unlock()
	byRecord := map[[2]int64][]handling{}
	for _, h := range log {
		k := [2]int64{int64(h.partition), h.offset}
		byRecord[k] = append(byRecord[k], h)
	}
	lost := 0
	for p := range int32(parts) {
		for off := range produced[p] {
			if len(byRecord[[2]int64{int64(p), off}]) == 0 {
				lost++
			}
		}
	}
	var dups []string
	for k, hs := range byRecord {
		if len(hs) > 1 {
			dups = append(dups, fmt.Sprintf("%d/%d by %v", k[0], k[1], hs))
		}
	}
	sort.Strings(dups)
	t.Logf("%d records produced, %d handlings, %d lost, %d handled twice", total, len(log), lost, len(dups))
	if lost > 0 {
		t.Errorf("%d records were never handled", lost)
	}
	if len(dups) > 0 {
		t.Errorf("records handled twice although their first handler acked them before the drain committed: %v", dups[:min(len(dups), 10)])
	}
}

// waitFor polls cond every 10 ms for up to 15 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not so within 15 s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
