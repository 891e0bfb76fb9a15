package health

import (
	"context"
	"encoding/json"
	"errors"
	"sync"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// Backlog is what waits for a runner at the broker, in the full report: the
// queue's ready messages and its consumers, or a consumer group's lag per
// partition and in total (see broker.Backlog), or why the broker could not
// be asked.
//
// In JSON, a Backlog with an Error has only the error: no numbers, which a
// client would read as an empty queue.
type Backlog struct {
	broker.Backlog
	// Error is why the broker could not be asked, if it could not. The
	// numbers are then zero and left out of the JSON.
	Error string `json:"error,omitempty"`
}

// MarshalJSON implements json.Marshaler: the numbers, or the error alone.
func (b Backlog) MarshalJSON() ([]byte, error) {
	if b.Error != "" {
		return json.Marshal(struct {
			Error string `json:"error"`
		}{b.Error})
	}
	return json.Marshal(b.Backlog)
}

// backlogs is a Reporter that can also ask what waits for each runner:
// *consumer.Supervisor, whose Backlog calls the runner's own rate-limited
// Backlog (Consumer.Backlog).
type backlogs interface {
	Backlog(ctx context.Context, runner string) (broker.Backlog, error)
}

// FullReport is Report with the backlog of every runner that reports one:
// when the Reporter has a Backlog(ctx, runner) method, as *consumer.Supervisor
// has, each runner's Backlog (Consumer.Backlog for a consumer whose source is
// a broker.BacklogReporter). The broker is asked at most once per
// consumer.BacklogInterval per consumer, by all readers together (health
// reports and metrics scrapes share one cache), each call bounded by 2 s; an
// error is shared for a second. Runners that report no backlog (a RunnerFunc,
// a source without one) have none in the report. The runners are asked at
// once, and FullReport returns when ctx is done.
func (h *Handler) FullReport(ctx context.Context) Report {
	rep := h.Report()
	bl, ok := h.r.(backlogs)
	if !ok {
		return rep
	}
	var wg sync.WaitGroup
	for i := range rep.Consumers {
		wg.Go(func() {
			b, err := bl.Backlog(ctx, rep.Consumers[i].Name)
			switch {
			case errors.Is(err, consumer.ErrNoBacklog):
			case err != nil:
				rep.Consumers[i].Backlog = &Backlog{Error: consumer.ErrorText(err)}
			default:
				rep.Consumers[i].Backlog = &Backlog{Backlog: b}
			}
		})
	}
	wg.Wait()
	return rep
}
