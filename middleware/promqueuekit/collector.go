package promqueuekit

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	prom "github.com/prometheus/client_golang/prometheus"
	"github.com/queuekit/queuekit/broker"
)

// A LagSource reports how far a Kafka consumer group is behind, per
// partition of the topic it consumes: the partition's high watermark minus
// the group's committed offset. *kafka.Source of broker/kafka satisfies it;
// the interface is structural so that broker/kafka does not import this
// package (nor Prometheus).
//
// LagByPartition is called from a Prometheus scrape, at most once per
// CollectorConfig.MinInterval, with a context bounded by CollectorConfig.Timeout.
type LagSource interface {
	LagByPartition(ctx context.Context) (map[int]int64, error)
}

// LagFunc adapts a function to a LagSource, for a source of another shape.
type LagFunc func(ctx context.Context) (map[int]int64, error)

// LagByPartition calls f(ctx).
func (f LagFunc) LagByPartition(ctx context.Context) (map[int]int64, error) { return f(ctx) }

// DepthFunc adapts a function to a DepthSource.
type DepthFunc func(ctx context.Context) (messages, consumers int, err error)

// QueueDepth calls f(ctx).
func (f DepthFunc) QueueDepth(ctx context.Context) (messages, consumers int, err error) {
	return f(ctx)
}

// A DepthSource reports the depth of a RabbitMQ queue: the messages ready in
// it and the consumers subscribed to it, as a passive queue declare returns
// them. *rabbitmq.Source of broker/rabbitmq satisfies it.
//
// QueueDepth is called from a Prometheus scrape, at most once per
// CollectorConfig.MinInterval, with a context bounded by CollectorConfig.Timeout.
type DepthSource interface {
	QueueDepth(ctx context.Context) (messages, consumers int, err error)
}

// CollectorConfig configures a LagCollector or DepthCollector. Zero fields
// mean the documented defaults.
type CollectorConfig struct {
	// Namespace is the metric name prefix. Default "queuekit".
	Namespace string
	// Consumer is the value of the consumer label. Required.
	Consumer string
	// Destination is the Kafka topic (label "topic") or RabbitMQ queue
	// (label "queue") the source reads. Required.
	Destination string
	// MinInterval is the shortest time between two calls of the source:
	// scrapes closer together than that get the previous result, so that
	// several Prometheus servers scraping often do not load the broker.
	// Default 15s.
	MinInterval time.Duration
	// Timeout bounds each call of the source. Default 5s.
	Timeout time.Duration
}

func (c *CollectorConfig) validate() error {
	if c.Namespace == "" {
		c.Namespace = "queuekit"
	}
	if c.MinInterval == 0 {
		c.MinInterval = 15 * time.Second
	}
	if c.Timeout == 0 {
		c.Timeout = 5 * time.Second
	}
	switch {
	case !validNamespace(c.Namespace):
		return fmt.Errorf("%w: metric namespace %q", broker.ErrInvalidConfig, c.Namespace)
	case c.Consumer == "":
		return fmt.Errorf("%w: collector needs a Consumer name", broker.ErrInvalidConfig)
	case c.Destination == "":
		return fmt.Errorf("%w: collector needs a Destination", broker.ErrInvalidConfig)
	case c.MinInterval < 0 || c.Timeout < 0:
		return fmt.Errorf("%w: negative collector interval or timeout", broker.ErrInvalidConfig)
	}
	return nil
}

// limiter runs fetch at most once per interval and shares its result between
// scrapes. Concurrent scrapes wait for the one fetch in progress (mu is held
// across it), so the broker sees at most one request at a time.
type limiter[T any] struct {
	cfg   CollectorConfig
	fetch func(ctx context.Context) (T, error)
	now   func() time.Time

	mu   sync.Mutex
	last time.Time
	val  T
	err  error
	errs prom.Counter
}

func (l *limiter[T]) get() (T, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if !l.last.IsZero() && now.Sub(l.last) < l.cfg.MinInterval {
		return l.val, l.err
	}
	ctx, cancel := context.WithTimeout(context.Background(), l.cfg.Timeout)
	defer cancel()
	l.val, l.err = l.fetch(ctx)
	l.last = now
	if l.err != nil {
		l.errs.Inc()
	}
	return l.val, l.err
}

// A LagCollector exports queuekit_kafka_consumer_lag{consumer,topic,partition}
// from a LagSource, and counts failed calls of the source in
// queuekit_collector_errors_total{consumer,collector="kafka_lag"}. When the
// source fails, the lag is left out of the scrape rather than reported stale.
//
// Register it with reg.Register. It starts no goroutines: the source is
// called from Collect, rate-limited by MinInterval. It is safe for concurrent use.
type LagCollector struct {
	lim  limiter[map[int]int64]
	lag  *prom.Desc
	errs prom.Counter
}

// NewLagCollector returns a collector of src's lag. It returns an error
// wrapping consumer.ErrInvalidConfig when src is nil or cfg is invalid.
func NewLagCollector(src LagSource, cfg CollectorConfig) (*LagCollector, error) {
	if src == nil {
		return nil, fmt.Errorf("%w: nil LagSource", broker.ErrInvalidConfig)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	c := &LagCollector{
		lag: prom.NewDesc(prom.BuildFQName(cfg.Namespace, "kafka", "consumer_lag"),
			"Records a Kafka consumer group has not committed yet, per partition (high watermark minus committed offset).",
			[]string{"partition"}, prom.Labels{LabelConsumer: cfg.Consumer, "topic": cfg.Destination}),
		errs: collectorErrors(cfg, "kafka_lag"),
	}
	c.lim = limiter[map[int]int64]{cfg: cfg, fetch: src.LagByPartition, now: time.Now, errs: c.errs}
	return c, nil
}

// Describe implements prometheus.Collector.
func (c *LagCollector) Describe(ch chan<- *prom.Desc) {
	ch <- c.lag
	c.errs.Describe(ch)
}

// Collect implements prometheus.Collector.
func (c *LagCollector) Collect(ch chan<- prom.Metric) {
	lags, err := c.lim.get()
	if err == nil {
		for p, n := range lags {
			ch <- prom.MustNewConstMetric(c.lag, prom.GaugeValue, float64(n), strconv.Itoa(p))
		}
	}
	c.errs.Collect(ch)
}

// A DepthCollector exports queuekit_rabbitmq_queue_messages{consumer,queue}
// and queuekit_rabbitmq_queue_consumers{consumer,queue} from a DepthSource,
// and counts failed calls of the source in
// queuekit_collector_errors_total{consumer,collector="rabbitmq_depth"}. When
// the source fails, both are left out of the scrape rather than reported stale.
//
// Register it with reg.Register. It starts no goroutines: the source is
// called from Collect, rate-limited by MinInterval. It is safe for concurrent use.
type DepthCollector struct {
	lim       limiter[[2]int]
	messages  *prom.Desc
	consumers *prom.Desc
	errs      prom.Counter
}

// NewDepthCollector returns a collector of src's queue depth. It returns an
// error wrapping consumer.ErrInvalidConfig when src is nil or cfg is invalid.
func NewDepthCollector(src DepthSource, cfg CollectorConfig) (*DepthCollector, error) {
	if src == nil {
		return nil, fmt.Errorf("%w: nil DepthSource", broker.ErrInvalidConfig)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	labels := prom.Labels{LabelConsumer: cfg.Consumer, "queue": cfg.Destination}
	c := &DepthCollector{
		messages: prom.NewDesc(prom.BuildFQName(cfg.Namespace, "rabbitmq", "queue_messages"),
			"Messages ready in the RabbitMQ queue (passive queue declare).", nil, labels),
		consumers: prom.NewDesc(prom.BuildFQName(cfg.Namespace, "rabbitmq", "queue_consumers"),
			"Consumers subscribed to the RabbitMQ queue (passive queue declare).", nil, labels),
		errs: collectorErrors(cfg, "rabbitmq_depth"),
	}
	fetch := func(ctx context.Context) ([2]int, error) {
		m, n, err := src.QueueDepth(ctx)
		return [2]int{m, n}, err
	}
	c.lim = limiter[[2]int]{cfg: cfg, fetch: fetch, now: time.Now, errs: c.errs}
	return c, nil
}

// Describe implements prometheus.Collector.
func (c *DepthCollector) Describe(ch chan<- *prom.Desc) {
	ch <- c.messages
	ch <- c.consumers
	c.errs.Describe(ch)
}

// Collect implements prometheus.Collector.
func (c *DepthCollector) Collect(ch chan<- prom.Metric) {
	v, err := c.lim.get()
	if err == nil {
		ch <- prom.MustNewConstMetric(c.messages, prom.GaugeValue, float64(v[0]))
		ch <- prom.MustNewConstMetric(c.consumers, prom.GaugeValue, float64(v[1]))
	}
	c.errs.Collect(ch)
}

func collectorErrors(cfg CollectorConfig, name string) prom.Counter {
	return prom.NewCounter(prom.CounterOpts{
		Namespace:   cfg.Namespace,
		Name:        "collector_errors_total",
		Help:        "Failed calls of a broker metrics source (Kafka lag, RabbitMQ queue depth).",
		ConstLabels: prom.Labels{LabelConsumer: cfg.Consumer, "collector": name},
	})
}
