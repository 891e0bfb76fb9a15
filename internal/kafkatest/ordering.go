package kafkatest

import (
	"context"
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// commitWatch checks every OffsetCommit the cluster receives for the group
// against what handlers finished: a commit of offset c on a partition is
// correct only if every record below c finished its handler.
type commitWatch struct {
	mu         sync.Mutex
	finished   map[int]map[int64]bool
	contig     map[int]int64 // every offset below it finished
	commits    int
	violations []string
}

func newCommitWatch() *commitWatch {
	return &commitWatch{finished: map[int]map[int64]bool{}, contig: map[int]int64{}}
}

func (w *commitWatch) finish(p int, off int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.finished[p] == nil {
		w.finished[p] = map[int64]bool{}
	}
	w.finished[p][off] = true
	for w.finished[p][w.contig[p]] {
		w.contig[p]++
	}
}

func (w *commitWatch) install(c *Cluster, group, topic string) { w.installOn(c.Fake, group, topic) }

func (w *commitWatch) installOn(fake *kfake.Cluster, group, topic string) {
	fake.ControlKey(int16(kmsg.OffsetCommit), func(req kmsg.Request) (kmsg.Response, error, bool) {
		fake.KeepControl()
		r := req.(*kmsg.OffsetCommitRequest)
		if r.Group != group {
			return nil, nil, false
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		w.commits++
		for _, t := range r.Topics {
			if t.Topic != topic {
				continue
			}
			for _, p := range t.Partitions {
				if c := w.contig[int(p.Partition)]; p.Offset > c {
					w.violations = append(w.violations, "partition "+strconv.Itoa(int(p.Partition))+
						": commit "+strconv.FormatInt(p.Offset, 10)+" passes unfinished offset "+strconv.FormatInt(c, 10))
				}
			}
		}
		return nil, nil, false // let the cluster handle it
	})
}

// A CommitWatch checks every OffsetCommit a kfake cluster receives for one
// group and topic against the records whose handlers finished (Finish): a
// commit of offset c on a partition is correct only if every record below c
// finished. It is the check of ByKeyKeepsPerKeyOrder, for an adapter's own
// tests (batches).
type CommitWatch struct{ w *commitWatch }

// WatchCommits starts checking the commits of group on topic that fake
// receives.
func WatchCommits(fake *kfake.Cluster, group, topic string) *CommitWatch {
	w := newCommitWatch()
	w.installOn(fake, group, topic)
	return &CommitWatch{w: w}
}

// Finish records that the handler of the record at off of partition p
// finished.
func (c *CommitWatch) Finish(p int, off int64) { c.w.finish(p, off) }

// Result returns the number of commits seen and the violations found so far.
func (c *CommitWatch) Result() (commits int, violations []string) {
	c.w.mu.Lock()
	defer c.w.mu.Unlock()
	return c.w.commits, append([]string(nil), c.w.violations...)
}

// ByKeyKeepsPerKeyOrder: with Ordering ByKey, records of different keys in
// one partition run concurrently (but at most MaxInFlight of a partition at
// once), records of one key never overlap and run in offset order, each
// record is handled once, no commit passes a record whose handler has not
// finished, and the committed offsets reach the end. Needs kfake (the
// commit check reads the OffsetCommit requests).
func ByKeyKeepsPerKeyOrder(t *testing.T, a Adapter) {
	c := NewCluster(t)
	c.NeedFake(t)
	t.Logf("running %s against %s", a.Name, c.What)
	topic := c.Topic(t, "bykey")
	const n, keys = 3000, 40
	c.Produce(t, topic, 0, n, func(i int) string { return "key-" + strconv.Itoa(i%keys) })
	group := "g-" + topic
	watch := newCommitWatch()
	watch.install(c, group, topic)

	var (
		mu         sync.Mutex
		last       = map[string]int{}  // key → body index of the last started record
		running    = map[string]bool{} // key → a record of it is running
		perPart    = map[int]int{}     // partition → records running now
		maxPerPart int
		errs       []string
		done       int
	)
	h := consumer.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		i, _ := strconv.Atoi(string(m.Body))
		k := string(m.Key)
		p, off := idOffset(m.ID)
		mu.Lock()
		if running[k] {
			errs = append(errs, "key "+k+": two records at once")
		}
		if prev, ok := last[k]; ok && prev >= i {
			errs = append(errs, "key "+k+": record "+strconv.Itoa(i)+" after "+strconv.Itoa(prev))
		}
		running[k], last[k] = true, i
		perPart[p]++
		maxPerPart = max(maxPerPart, perPart[p])
		mu.Unlock()

		time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)

		mu.Lock()
		running[k] = false
		perPart[p]--
		done++
		mu.Unlock()
		watch.finish(p, off)
		return nil
	})
	cfg := c.config(topic, group)
	cfg.Ordering = ByKey
	cfg.MaxInFlight = 16
	cfg.CommitBatch = 50 // many commits to check
	m := startMember(t, a.NewSource(t, cfg), h, consumer.WithConcurrency(32))
	waitFor(t, "every record handled", 60*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return done >= n })
	m.stop(t)

	mu.Lock()
	defer mu.Unlock()
	watch.mu.Lock()
	defer watch.mu.Unlock()
	t.Logf("%d records, %d keys: %d commits checked, %d violations; at most %d records of one partition ran at once; order errors %d",
		n, keys, watch.commits, len(watch.violations), maxPerPart, len(errs))
	for _, v := range watch.violations[:min(len(watch.violations), 5)] {
		t.Error(v)
	}
	for _, v := range errs[:min(len(errs), 5)] {
		t.Error(v)
	}
	if done != n {
		t.Errorf("handled %d records; want %d (each once)", done, n)
	}
	if watch.commits < 5 {
		t.Errorf("only %d commits observed; the check saw too little", watch.commits)
	}
	if maxPerPart < 2 {
		t.Errorf("at most %d records of a partition ran at once; ByKey should run different keys concurrently", maxPerPart)
	}
	if maxPerPart > cfg.MaxInFlight {
		t.Errorf("%d records of a partition ran at once; MaxInFlight is %d", maxPerPart, cfg.MaxInFlight)
	}
	end, got := c.EndOffsets(t, topic), c.Committed(t, group, topic)
	for p := range Partitions {
		if got[p] != end[p] {
			t.Errorf("partition %d: committed = %d; want end offset %d", p, got[p], end[p])
		}
	}
}

// ByPartitionRunsOneRecordPerPartition: by default (ByPartition) a
// partition's records run one at a time, in offset order, each once.
func ByPartitionRunsOneRecordPerPartition(t *testing.T, a Adapter) {
	c := NewCluster(t)
	t.Logf("running %s against %s", a.Name, c.What)
	topic := c.Topic(t, "bypart")
	const n = 1000
	c.Produce(t, topic, 0, n, func(i int) string { return "key-" + strconv.Itoa(i%37) })
	var (
		mu      sync.Mutex
		last    = map[int]int64{}
		running = map[int]bool{}
		errs    []string
		done    int
	)
	h := consumer.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		p, off := idOffset(m.ID)
		mu.Lock()
		if running[p] {
			errs = append(errs, "partition "+strconv.Itoa(p)+": two records at once")
		}
		if prev, ok := last[p]; ok && prev >= off {
			errs = append(errs, "partition "+strconv.Itoa(p)+": offset "+strconv.FormatInt(off, 10)+" after "+strconv.FormatInt(prev, 10))
		}
		running[p], last[p] = true, off
		mu.Unlock()
		time.Sleep(50 * time.Microsecond)
		mu.Lock()
		running[p] = false
		done++
		mu.Unlock()
		return nil
	})
	m := startMember(t, a.NewSource(t, c.config(topic, "g-"+topic)), h, consumer.WithConcurrency(16))
	waitFor(t, "every record handled", 30*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return done >= n })
	m.stop(t)
	mu.Lock()
	defer mu.Unlock()
	for _, v := range errs[:min(len(errs), 5)] {
		t.Error(v)
	}
	if done != n {
		t.Errorf("handled %d; want %d", done, n)
	}
}
