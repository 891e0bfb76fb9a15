package franz

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// benchSource is a Source with partitions assigned by hand and no client:
// records go in through take, as the poll goroutine puts them, and out
// through Receive and Ack. It measures the Source's own cost per record,
// without a cluster.
func benchSource(b *testing.B, ord Ordering, parts int) *Source {
	s, err := NewSource(Config{Brokers: []string{"localhost:9092"}, GroupID: "g", Topic: "t", Ordering: ord})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.admin.Close() })
	s.startOnce.Do(func() {}) // no client
	for p := range int32(parts) {
		s.parts[p] = s.newPart(p)
	}
	return s
}

// fetches makes a poll of n records spread over parts partitions, from
// offset next[p].
func fetches(n, parts int, next []int64, keys [][]byte, value []byte) kgo.Fetches {
	ps := make([]kgo.FetchPartition, parts)
	recs := make([]kgo.Record, n)
	for i := range recs {
		p := i % parts
		r := &recs[i]
		*r = kgo.Record{Topic: "t", Partition: int32(p), Offset: next[p], Key: keys[i%len(keys)], Value: value, Timestamp: time.Unix(1, 0)}
		next[p]++
		ps[p].Partition = int32(p)
		ps[p].Records = append(ps[p].Records, r)
	}
	return kgo.Fetches{{Topics: []kgo.FetchTopic{{Topic: "t", Partitions: ps}}}}
}

// BenchmarkReceiveAck: one record through take, Receive and Ack, on one
// goroutine, in polls of 4,096 records over 4 partitions.
func BenchmarkReceiveAck(b *testing.B) {
	for _, ord := range []Ordering{ByPartition, ByKey} {
		b.Run(ord.String(), func(b *testing.B) {
			const parts, poll = 4, 4096
			s := benchSource(b, ord, parts)
			s.cfg.MaxInFlight = 1 << 20 // every record of a poll on the lanes
			keys := make([][]byte, 10000)
			for i := range keys {
				keys[i] = fmt.Appendf(nil, "key-%05d", i)
			}
			value := make([]byte, 100)
			next := make([]int64, parts)
			var sc pollScratch
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			// One poll, its offsets moved on in place each round: every
			// record of a round is acked before the next.
			fs := fetches(poll, parts, next, keys, value)
			for i := 0; i < b.N; i += poll {
				if i > 0 {
					fs.EachRecord(func(r *kgo.Record) { r.Offset += poll / parts })
				}
				s.take(fs, &sc)
				for range fs.NumRecords() {
					d, err := s.Receive(ctx)
					if err != nil {
						b.Fatal(err)
					}
					if err := d.Ack(ctx); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

// TestLaneTableMatchesAMap: random puts and deletes of lanes with
// colliding keys keep the table equal to a map.
func TestLaneTableMatchesAMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var tab laneTable
	model := map[uint64]*lane{}
	for step := range 200000 {
		key := uint64(rng.IntN(300)) << (rng.IntN(2) * 40) // collisions in the low bits
		if ln := model[key]; ln != nil && rng.IntN(2) == 0 {
			if !tab.del(ln) {
				t.Fatalf("step %d: del(%d) = false; want true", step, key)
			}
			delete(model, key)
		} else if ln == nil {
			ln := &lane{key: key}
			tab.put(ln)
			model[key] = ln
		}
		if got := tab.get(key); got != model[key] {
			t.Fatalf("step %d: get(%d) = %p; want %p", step, key, got, model[key])
		}
		if tab.n != len(model) {
			t.Fatalf("step %d: %d lanes; want %d", step, tab.n, len(model))
		}
	}
	for key, ln := range model {
		if tab.get(key) != ln {
			t.Fatalf("get(%d) lost its lane", key)
		}
	}
}

// TestMessageIDs: the IDs built for a poll, incremented in place for
// consecutive offsets, are topic/partition/offset, across carries (9 → 10,
// 99 → 100) and gaps.
func TestMessageIDs(t *testing.T) {
	s, err := NewSource(Config{Brokers: []string{"localhost:9092"}, GroupID: "g", Topic: "t"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.admin.Close()
	offs := []int64{0, 1, 8, 9, 10, 11, 98, 99, 100, 101, 999, 1000, 1001, 1005, 1006, 1009, 1010}
	var recs []*kgo.Record
	for _, o := range offs {
		recs = append(recs, &kgo.Record{Topic: "t", Partition: 12, Offset: o})
	}
	fs := kgo.Fetches{{Topics: []kgo.FetchTopic{{Topic: "t", Partitions: []kgo.FetchPartition{{Partition: 12, Records: recs}}}}}}
	var sc pollScratch
	s.parts[12] = s.newPart(12)
	s.cfg.MaxInFlight = 100
	s.take(fs, &sc)
	s.startOnce.Do(func() {})
	for _, o := range offs {
		d, err := s.Receive(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("t/12/%d", o); d.Message().ID != want {
			t.Fatalf("Message().ID = %q; want %q", d.Message().ID, want)
		}
		if err := d.Ack(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
}
