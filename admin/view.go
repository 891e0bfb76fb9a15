package admin

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// Runner is one runner of the Supervisor as the page and GET api/runners
// show it.
type Runner struct {
	Name      string         `json:"name"`
	State     consumer.State `json:"state"`
	Since     time.Time      `json:"since"`
	Restarts  int            `json:"restarts"`
	LastError string         `json:"last_error,omitempty"`
	// Reason says why the consumer's kill switch is tripped or probing
	// (consumer.RunnerHealth.Reason, redacted); empty otherwise.
	Reason string `json:"reason,omitempty"`
	// Stats are the runner's counters (consumer.Stats); nil for a runner
	// that keeps none.
	Stats *consumer.Stats `json:"stats,omitempty"`
	// HandledPerSec and FailedPerSec are rates from the differences of the
	// counters between two requests at least a second apart; nil until
	// there are two such requests.
	HandledPerSec *float64 `json:"handled_per_sec,omitempty"`
	FailedPerSec  *float64 `json:"failed_per_sec,omitempty"`
	// Backlog is what waits at the broker (Supervisor.Backlog); nil with
	// BacklogError when the broker did not say, or the runner has none.
	Backlog      *broker.Backlog `json:"backlog,omitempty"`
	BacklogError string          `json:"backlog_error,omitempty"`
	// DeadLetters is how many dead letters the runner's source has; nil
	// with DeadLettersError when they cannot be counted, or the runner has
	// none to show (HasDeadLetters false).
	HasDeadLetters   bool   `json:"has_dead_letters"`
	DeadLetters      *int   `json:"dead_letters,omitempty"`
	DeadLettersError string `json:"dead_letters_error,omitempty"`
}

// Pausable reports whether the page offers pause and resume for the runner:
// a runner with counters (a consumer) that is running, paused, tripped,
// reconnecting or stalled.
func (r Runner) Pausable() bool {
	return r.Stats != nil && (r.State == consumer.StateRunning || r.State == consumer.StatePaused ||
		r.State == consumer.StateReconnecting || r.State == consumer.StateStalled || r.State == consumer.StateTripped)
}

// rateState is the last sample of one runner's counters.
type rateState struct {
	at               time.Time
	handled, failed  int64
	hps, fps         float64
	haveRate, haveAt bool
}

// minRateInterval is the least time between the two samples of a rate:
// closer requests reuse the last rate, which would otherwise swing with
// each message.
const minRateInterval = time.Second

// rate updates the runner's sample with st and returns its rates.
func (h *handler) rate(name string, st consumer.Stats, now time.Time) (hps, fps *float64) {
	h.rmu.Lock()
	defer h.rmu.Unlock()
	rs := h.rates[name]
	if rs == nil {
		rs = &rateState{}
		h.rates[name] = rs // bounded: one per runner, and runners are fixed
	}
	switch {
	case !rs.haveAt || st.Handled < rs.handled || st.Failed < rs.failed:
		rs.at, rs.handled, rs.failed, rs.haveAt = now, st.Handled, st.Failed, true
	case now.Sub(rs.at) >= minRateInterval:
		secs := now.Sub(rs.at).Seconds()
		rs.hps = float64(st.Handled-rs.handled) / secs
		rs.fps = float64(st.Failed-rs.failed) / secs
		rs.haveRate = true
		rs.at, rs.handled, rs.failed = now, st.Handled, st.Failed
	}
	if !rs.haveRate {
		return nil, nil
	}
	a, b := rs.hps, rs.fps
	return &a, &b
}

// runners collects the view of every runner. The calls to runners and
// brokers (backlog, dead-letter count) run concurrently through call:
// bounded by ctx even when they do not return, and unable to panic the
// process.
func (h *handler) runners(ctx context.Context) []Runner {
	health := h.sup.Health()
	out := make([]Runner, len(health.Runners))
	now := time.Now()
	var wg sync.WaitGroup
	for i, rh := range health.Runners {
		v := &out[i]
		*v = Runner{Name: rh.Name, State: rh.State, Since: rh.Since, Restarts: rh.Restarts, LastError: redact(rh.LastError), Reason: redact(rh.Reason)}
		if st, err := h.sup.Stats(rh.Name); err == nil {
			v.Stats = &st
			v.HandledPerSec, v.FailedPerSec = h.rate(rh.Name, st, now)
		}
		wg.Add(2)
		go func() {
			defer wg.Done()
			b, err := h.backlog(ctx, v.Name)
			switch {
			case err == nil:
				v.Backlog = &b
			case errors.Is(err, consumer.ErrNoBacklog):
				v.BacklogError = "not reported"
			default:
				v.BacklogError = err.Error() // safe: call's errors cannot panic
			}
		}()
		go func() {
			defer wg.Done()
			n, err := h.countDL(ctx, v.Name, broker.DeadLetterFilter{})
			switch {
			case err == nil:
				v.HasDeadLetters, v.DeadLetters = true, &n
			case errors.Is(err, consumer.ErrNoDeadLetters):
			default:
				v.HasDeadLetters, v.DeadLettersError = true, err.Error()
			}
		}()
	}
	wg.Wait()
	return out
}
