package kafka_test

import (
	"strconv"
	"sync"

	"github.com/twmb/franz-go/pkg/kmsg"
)

// The ordering scenarios (ByKey and ByPartition) are shared with the
// franz-go adapter: internal/kafkatest, run by TestScenarios
// (scenarios_test.go). commitWatch stays for the batch tests.

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

func (w *commitWatch) install(e *env, group, topic string) {
	e.cluster.ControlKey(int16(kmsg.OffsetCommit), func(req kmsg.Request) (kmsg.Response, error, bool) {
		e.cluster.KeepControl()
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
