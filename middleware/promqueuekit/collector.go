package promqueuekit

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"

	prom "github.com/prometheus/client_golang/prometheus"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// A BacklogCollector exports what waits at the broker for each consumer of
// a Supervisor, as the consumers report it (Supervisor.Backlog, which reads
// Consumer.Backlog):
//
//	queuekit_backlog_messages{consumer}                     messages waiting: a queue's ready
//	                                                        messages, a consumer group's total lag
//	queuekit_backlog_consumers{consumer}                    consumers subscribed to the queue
//	                                                        (left out where the broker does not say)
//	queuekit_backlog_partition_messages{consumer,partition} a consumer group's lag per partition
//	queuekit_backlog_up{consumer}                           1 when the broker answered, 0 when not
//
// Consumers whose source reports no backlog are left out. When the broker
// does not answer, a consumer's gauges are left out of the scrape (rather
// than reported stale) and its queuekit_backlog_up is 0.
//
// Register it with reg.Register. It starts no goroutines of its own
// outside Collect, and holds no cache of its own: each consumer asks its
// broker at most once per consumer.BacklogInterval for all readers
// together — this collector, package health's full report — each call
// bounded by 2 s. It is safe for concurrent use.
type BacklogCollector struct {
	sup        *consumer.Supervisor
	messages   *prom.Desc
	consumers  *prom.Desc
	partitions *prom.Desc
	up         *prom.Desc
}

// NewBacklogCollector returns a collector of the backlogs of sup's
// consumers. Of the Recorder options, only WithNamespace applies. It returns
// an error wrapping broker.ErrInvalidConfig when sup is nil or the namespace
// is invalid.
func NewBacklogCollector(sup *consumer.Supervisor, opts ...Option) (*BacklogCollector, error) {
	o := options{namespace: "queuekit"}
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	switch {
	case sup == nil:
		return nil, fmt.Errorf("%w: nil Supervisor", broker.ErrInvalidConfig)
	case !validNamespace(o.namespace):
		return nil, fmt.Errorf("%w: metric namespace %q", broker.ErrInvalidConfig, o.namespace)
	}
	name := func(n string) string { return prom.BuildFQName(o.namespace, "backlog", n) }
	return &BacklogCollector{
		sup: sup,
		messages: prom.NewDesc(name("messages"),
			"Messages waiting for the consumer at the broker: the queue's ready messages, or the consumer group's lag over all partitions.",
			[]string{LabelConsumer}, nil),
		consumers: prom.NewDesc(name("consumers"),
			"Consumers subscribed to the consumer's queue.", []string{LabelConsumer}, nil),
		partitions: prom.NewDesc(name("partition_messages"),
			"The consumer group's lag per partition (high watermark minus committed offset).",
			[]string{LabelConsumer, "partition"}, nil),
		up: prom.NewDesc(name("up"),
			"1 when the consumer's broker answered the last backlog call, 0 when it did not.",
			[]string{LabelConsumer}, nil),
	}, nil
}

// Describe implements prometheus.Collector.
func (c *BacklogCollector) Describe(ch chan<- *prom.Desc) {
	ch <- c.messages
	ch <- c.consumers
	ch <- c.partitions
	ch <- c.up
}

// Collect implements prometheus.Collector. It asks for the consumers'
// backlogs at once and returns when each has answered, or within 2 s.
func (c *BacklogCollector) Collect(ch chan<- prom.Metric) {
	runners := c.sup.Health().Runners
	type answer struct {
		b   broker.Backlog
		err error
	}
	answers := make([]answer, len(runners))
	var wg sync.WaitGroup
	for i, r := range runners {
		wg.Go(func() {
			answers[i].b, answers[i].err = c.sup.Backlog(context.Background(), r.Name)
		})
	}
	wg.Wait()
	for i, r := range runners {
		a := answers[i]
		switch {
		case errors.Is(a.err, consumer.ErrNoBacklog):
			continue
		case a.err != nil:
			send(ch, c.up, 0, r.Name)
			continue
		}
		send(ch, c.up, 1, r.Name)
		send(ch, c.messages, float64(a.b.Messages), r.Name)
		if a.b.Consumers >= 0 {
			send(ch, c.consumers, float64(a.b.Consumers), r.Name)
		}
		for p, n := range a.b.Partitions {
			send(ch, c.partitions, float64(n), r.Name, strconv.Itoa(p))
		}
	}
}

// send sends a gauge for label values made valid UTF-8 (see the Label
// constants). A metric the client library refuses anyway is left out of the
// scrape rather than failing it (or panicking, as MustNewConstMetric would).
func send(ch chan<- prom.Metric, d *prom.Desc, v float64, lvs ...string) {
	m, err := prom.NewConstMetric(d, prom.GaugeValue, v, labelValues(lvs)...)
	if err != nil {
		return
	}
	ch <- m
}
