package health

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// A Reporter reports the health of runners. *consumer.Supervisor is one. A
// Reporter that also has a Backlog(ctx, runner) method, as the Supervisor
// has, gives the full report each runner's backlog.
type Reporter interface {
	Health() consumer.Health
}

// An Option configures a Handler.
type Option func(*Handler)

// WithWatchdog makes liveness fail while w reports a stuck handler call,
// and lists the stuck calls in the report.
func WithWatchdog(w *Watchdog) Option { return func(h *Handler) { h.wd = w } }

// Handler serves health reports as JSON built from a Reporter (a
// Supervisor) and, optionally, a Watchdog.
//
//   - Ready: 200 when every runner is running (consumer.Health.Ready);
//     503 while any is starting, paused, draining, reconnecting, stalled
//     (a settlement the broker does not take is being retried), tripped
//     (its kill switch stopped intake), failed or stopped, so that a load
//     balancer or Kubernetes stops sending work.
//   - Live: 200 unless the watchdog reports a stuck handler call: a process
//     whose handlers hang does not recover by itself, and restarting it
//     gives its messages back to the broker. A failed or reconnecting runner
//     does not fail liveness, because the Supervisor and the source are
//     already restarting and reconnecting it.
//   - ServeHTTP: the full report, 200 only when both hold. It includes
//     what waits at the broker for each consumer that reports it (see
//     FullReport); the probes never call the broker.
//
// Mount it in net/http as is (mux.Handle("/readyz", h.Ready())) and in Gin
// with gin.WrapH(h.Ready()). Every method answers every HTTP method; the
// response is never cached.
//
// A Handler is safe for concurrent use; no goroutine it starts outlives the
// call that started it.
type Handler struct {
	r  Reporter
	wd *Watchdog
}

// NewHandler returns a Handler reporting on r. It returns an error wrapping
// broker.ErrInvalidConfig when r is nil.
func NewHandler(r Reporter, opts ...Option) (*Handler, error) {
	if r == nil {
		return nil, fmt.Errorf("%w: nil health Reporter", broker.ErrInvalidConfig)
	}
	h := &Handler{r: r}
	for _, opt := range opts {
		if opt != nil {
			opt(h)
		}
	}
	return h, nil
}

// Report is the JSON body of every response.
type Report struct {
	// Status is "ok" when the probe that served the report passes, and
	// "unavailable" when it fails.
	Status string `json:"status"`
	// Ready is true when every runner is running.
	Ready bool `json:"ready"`
	// Live is false while a handler call is stuck.
	Live bool `json:"live"`
	// Consumers has one entry per runner, in the order they were added.
	Consumers []Consumer `json:"consumers"`
	// Stuck lists the stuck handler calls, oldest first.
	Stuck []Stuck `json:"stuck,omitempty"`
}

// Consumer is the health of one runner in a Report. It mirrors
// consumer.RunnerHealth with the state as a string, so that clients can
// decode reports without this package.
type Consumer struct {
	// Name is the runner's name: the name it was added to the Supervisor
	// under, which a consumer also uses in its logs, events and metrics.
	Name string `json:"name"`
	// State is a consumer.State name: starting, running, paused, draining,
	// reconnecting, stalled, tripped (its kill switch stopped intake),
	// failed or stopped.
	State string `json:"state"`
	// Ready is true when State is running.
	Ready bool `json:"ready"`
	// Since is when the runner entered its current supervisor-level state;
	// for a consumer whose kill switch is tripped, when it tripped
	// (consumer.RunnerHealth.Since).
	Since time.Time `json:"since"`
	// Restarts counts restarts after failures.
	Restarts int `json:"restarts"`
	// LastError is the text of the last failure, if any.
	LastError string `json:"last_error,omitempty"`
	// Reason says why the consumer's kill switch is tripped or probing
	// (consumer.RunnerHealth.Reason); empty otherwise.
	Reason string `json:"reason,omitempty"`
	// Backlog is what waits for the runner at the broker, in the full
	// report of a runner that reports it (see FullReport).
	Backlog *Backlog `json:"backlog,omitempty"`
}

// Report builds a report without asking the broker anything (no Backlog);
// Status is for both probes.
func (h *Handler) Report() Report {
	hs := h.r.Health()
	rep := Report{Ready: hs.Ready, Live: true, Consumers: make([]Consumer, 0, len(hs.Runners))}
	for _, r := range hs.Runners {
		rep.Consumers = append(rep.Consumers, Consumer{Name: r.Name, State: r.State.String(),
			Ready: r.State == consumer.StateRunning, Since: r.Since, Restarts: r.Restarts, LastError: r.LastError, Reason: r.Reason})
	}
	if h.wd != nil {
		rep.Stuck = h.wd.Stuck()
		rep.Live = len(rep.Stuck) == 0
	}
	rep.Status = status(rep.Ready && rep.Live)
	return rep
}

func status(ok bool) string {
	if ok {
		return "ok"
	}
	return "unavailable"
}

// ServeHTTP serves the full report (FullReport, with the request's context):
// 200 when ready and live, 503 otherwise.
func (h *Handler) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	rep := h.FullReport(req.Context())
	write(w, rep, rep.Ready && rep.Live)
}

// Ready returns the readiness probe: 200 when every runner is running, 503
// otherwise.
func (h *Handler) Ready() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		rep := h.Report()
		write(w, rep, rep.Ready)
	})
}

// Live returns the liveness probe: 200 unless a handler call is stuck.
func (h *Handler) Live() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		rep := h.Report()
		write(w, rep, rep.Live)
	})
}

func write(w http.ResponseWriter, rep Report, ok bool) {
	rep.Status = status(ok)
	body, err := json.Marshal(rep)
	if err != nil { // cannot happen with these types; answer anyway
		http.Error(w, `{"status":"unavailable"}`, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	code := http.StatusOK
	if !ok {
		code = http.StatusServiceUnavailable
	}
	w.WriteHeader(code)
	w.Write(append(body, '\n'))
}
