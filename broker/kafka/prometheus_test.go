package kafka_test

import (
	"github.com/queuekit/queuekit/broker/kafka"
	"github.com/queuekit/queuekit/middleware/prometheus"
)

// A Source is the lag source of the Prometheus lag collector as it is:
// prometheus.NewLagCollector(src, cfg). Test-only import: the kafka package
// itself does not depend on Prometheus.
var _ prometheus.LagSource = (*kafka.Source)(nil)
