package health

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"time"
)

// A LagSource reports a Kafka consumer group's lag per partition (partition →
// high-water mark minus committed offset). *kafka.Source is one.
type LagSource interface {
	LagByPartition(ctx context.Context) (map[int]int64, error)
}

// A DepthSource reports the messages waiting in a queue and the consumers
// subscribed to it. *rabbitmq.Source is one.
type DepthSource interface {
	QueueDepth(ctx context.Context) (messages, consumers int, err error)
}

// Backlog is what waits for a consumer at the broker, as of At.
type Backlog struct {
	// Lag is the consumer group's lag per partition (Kafka), and TotalLag
	// its sum.
	Lag      map[int]int64 `json:"lag,omitempty"`
	TotalLag *int64        `json:"total_lag,omitempty"` // nil for a DepthSource; 0 is no lag
	// Messages waiting in the queue and Consumers subscribed to it
	// (RabbitMQ). Nil for a LagSource.
	Messages  *int `json:"messages,omitempty"`
	Consumers *int `json:"consumers,omitempty"`
	// At is when the broker was asked.
	At time.Time `json:"at"`
	// Error is why the broker could not be asked, if it could not.
	Error string `json:"error,omitempty"`
}

// BacklogInterval is the shortest time between two broker calls for one
// runner's backlog: reports closer together than that reuse the previous
// answer, so that frequent health scrapes do not load the broker. A failed
// call is reused for backlogErrorInterval only.
const BacklogInterval = 10 * time.Second

// backlogErrorInterval is how long a failed call's error is reused.
const backlogErrorInterval = time.Second

// backlogTimeout bounds one broker call.
const backlogTimeout = 2 * time.Second

// WithLag adds the Kafka consumer-group lag of the named runner to the full
// report (FullReport and ServeHTTP), per partition. The probes (Ready, Live)
// never call the broker. A nil src is ignored.
func WithLag(runner string, src LagSource) Option {
	return func(h *Handler) {
		if src != nil {
			h.addBacklog(runner, func(ctx context.Context) (Backlog, error) {
				lag, err := src.LagByPartition(ctx)
				if err != nil {
					return Backlog{}, err
				}
				var total int64
				for _, n := range lag {
					total += n
				}
				return Backlog{Lag: maps.Clone(lag), TotalLag: &total}, nil
			})
		}
	}
}

// WithDepth adds the queue depth and consumer count of the named runner's
// RabbitMQ queue to the full report (FullReport and ServeHTTP). The probes
// (Ready, Live) never call the broker. A nil src is ignored.
func WithDepth(runner string, src DepthSource) Option {
	return func(h *Handler) {
		if src != nil {
			h.addBacklog(runner, func(ctx context.Context) (Backlog, error) {
				msgs, cons, err := src.QueueDepth(ctx)
				if err != nil {
					return Backlog{}, err
				}
				return Backlog{Messages: &msgs, Consumers: &cons}, nil
			})
		}
	}
}

// backlogOf measures one runner's backlog, at most once per BacklogInterval.
type backlogOf struct {
	fetch func(context.Context) (Backlog, error)
	mu    sync.Mutex // held during a fetch: concurrent reports wait for it
	last  *Backlog
}

func (h *Handler) addBacklog(runner string, fetch func(context.Context) (Backlog, error)) {
	if h.backlogs == nil {
		h.backlogs = make(map[string]*backlogOf)
	}
	h.backlogs[runner] = &backlogOf{fetch: fetch}
}

// get returns the runner's backlog: the cached one while fresh, else a new
// answer. The caller gets its own copy of Lag.
func (b *backlogOf) get(ctx context.Context, now func() time.Time) Backlog {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.last != nil {
		ttl := BacklogInterval
		if b.last.Error != "" {
			ttl = backlogErrorInterval
		}
		if now().Sub(b.last.At) < ttl {
			return b.last.copy()
		}
	}
	// Not the caller's cancellation: the answer is cached for every
	// caller, so one that went away must not leave them an error.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), backlogTimeout)
	defer cancel()
	got, err := b.fetch(ctx)
	got.At = now()
	if err != nil {
		got = Backlog{At: got.At, Error: fmt.Sprintf("backlog: %v", err)}
	}
	b.last = &got
	return got.copy()
}

func (b Backlog) copy() Backlog {
	b.Lag = maps.Clone(b.Lag)
	return b
}

// FullReport is Report with the backlog of the runners configured with
// WithLag or WithDepth. The broker is asked at most once per BacklogInterval
// per runner (an answer is reused until then, an error for a second), for all
// runners at once, each call bounded by 2 s: a source must honour its
// context. The calls carry ctx's values but not its cancellation, since their
// answers serve other callers too.
func (h *Handler) FullReport(ctx context.Context) Report {
	rep := h.Report()
	var wg sync.WaitGroup
	for i := range rep.Consumers {
		if b, ok := h.backlogs[rep.Consumers[i].Name]; ok {
			wg.Go(func() {
				bl := b.get(ctx, h.now)
				rep.Consumers[i].Backlog = &bl
			})
		}
	}
	wg.Wait()
	return rep
}
