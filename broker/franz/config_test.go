package franz_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/franz"
)

// TestNewSourceRefusesInvalidConfig: every invalid Config is an error
// wrapping broker.ErrInvalidConfig from NewSource, never a panic, and the
// error does not echo a broker address (which may carry credentials). No
// cluster is needed: NewSource does not connect.
func TestNewSourceRefusesInvalidConfig(t *testing.T) {
	valid := func() franz.Config {
		return franz.Config{Brokers: []string{"localhost:9092"}, GroupID: "g", Topic: "t"}
	}
	cases := []struct {
		name string
		edit func(c *franz.Config)
		want string // in the error text
	}{
		{"no brokers", func(c *franz.Config) { c.Brokers = nil }, "no brokers"},
		{"a broker URL with credentials", func(c *franz.Config) { c.Brokers = []string{"kafka://user:secret@host:9092"} }, "broker 0"},
		{"a broker without a port", func(c *franz.Config) { c.Brokers = []string{"host"} }, "broker 0"},
		{"empty GroupID", func(c *franz.Config) { c.GroupID = "" }, "GroupID"},
		{"empty Topic", func(c *franz.Config) { c.Topic = "" }, "Topic"},
		{"a Topic Kafka refuses", func(c *franz.Config) { c.Topic = "a topic" }, "Topic"},
		{"a Topic of 250 characters", func(c *franz.Config) { c.Topic = strings.Repeat("t", 250) }, "Topic"},
		{"a DeadLetterTopic Kafka refuses", func(c *franz.Config) { c.DeadLetterTopic = "dl/t" }, "DeadLetterTopic"},
		{"DeadLetterTopic is Topic", func(c *franz.Config) { c.DeadLetterTopic = "t" }, "DeadLetterTopic"},
		{"DeadLetterTopic collides with Topic", func(c *franz.Config) { c.Topic, c.DeadLetterTopic = "a.b", "a_b" }, "DeadLetterTopic"},
		{"unknown Ordering", func(c *franz.Config) { c.Ordering = 7 }, "Ordering"},
		{"unknown Isolation", func(c *franz.Config) { c.Isolation = -1 }, "Isolation"},
		{"negative MaxInFlight", func(c *franz.Config) { c.MaxInFlight = -1 }, "MaxInFlight"},
		{"negative CommitBatch", func(c *franz.Config) { c.CommitBatch = -5 }, "CommitBatch"},
		{"negative MaxBytes", func(c *franz.Config) { c.MaxBytes = -1 }, "MaxBytes"},
		{"negative CommitInterval", func(c *franz.Config) { c.CommitInterval = -time.Second }, "CommitInterval"},
		{"negative SessionTimeout", func(c *franz.Config) { c.SessionTimeout = -time.Second }, "SessionTimeout"},
		{"negative MaxWait", func(c *franz.Config) { c.MaxWait = -time.Millisecond }, "MaxWait"},
		{"negative RebalanceDrainTimeout", func(c *franz.Config) { c.RebalanceDrainTimeout = -time.Second }, "RebalanceDrainTimeout"},
		{"drain timeout not below the session timeout", func(c *franz.Config) {
			c.SessionTimeout, c.HeartbeatInterval, c.RebalanceDrainTimeout = time.Second, 100*time.Millisecond, time.Second
		}, "RebalanceDrainTimeout"},
		{"drain timeout not below the rebalance timeout", func(c *franz.Config) {
			c.RebalanceTimeout, c.RebalanceDrainTimeout = 2*time.Second, 3*time.Second
		}, "RebalanceDrainTimeout"},
		{"heartbeat not below the session timeout", func(c *franz.Config) {
			c.SessionTimeout, c.HeartbeatInterval = time.Second, time.Second
		}, "HeartbeatInterval"},
		{"StartOffset neither first nor last", func(c *franz.Config) { c.StartOffset = 42 }, "StartOffset"},
		{"negative Topology.Partitions", func(c *franz.Config) { c.Topology.Partitions = -1 }, "Topology.Partitions"},
		{"Topology.ReplicationFactor too large", func(c *franz.Config) { c.Topology.ReplicationFactor = 1 << 20 }, "ReplicationFactor"},
		{"a nil balancer", func(c *franz.Config) { c.Balancers = []kgo.GroupBalancer{nil} }, "Balancers"},
		{"a retry tier of 0", func(c *franz.Config) { c.RetryTopics = []time.Duration{0} }, "RetryTopics"},
		{"a retry tier given twice", func(c *franz.Config) { c.RetryTopics = []time.Duration{time.Second, time.Second} }, "given twice"},
		{"a retry tier not in milliseconds", func(c *franz.Config) { c.RetryTopics = []time.Duration{1500 * time.Microsecond} }, "milliseconds"},
		{"a retry tier over a week", func(c *franz.Config) { c.RetryTopics = []time.Duration{8 * 24 * time.Hour} }, "RetryTopics"},
		{"retry tiers with a GroupID Kafka refuses in a topic name", func(c *franz.Config) {
			c.GroupID, c.RetryTopics = "my group", []time.Duration{time.Second}
		}, "GroupID"},
		{"a retry topic that is the dead-letter topic", func(c *franz.Config) {
			c.RetryTopics = []time.Duration{time.Second, time.Minute}
			c.DeadLetterTopic = franz.RetryTopicName(c.Topic, c.GroupID, time.Minute)
		}, "retry topic"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := valid()
			c.edit(&cfg)
			s, err := franz.NewSource(cfg)
			if !errors.Is(err, broker.ErrInvalidConfig) {
				if s != nil {
					s.Close(t.Context())
				}
				t.Fatalf("NewSource(%s) = %v; want an error wrapping broker.ErrInvalidConfig", c.name, err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("NewSource(%s) = %q; want it to mention %q", c.name, err, c.want)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("NewSource(%s) = %q; it echoes the credentials of a broker address", c.name, err)
			}
		})
	}
}

// TestNewSourceAcceptsAValidConfig: the defaults pass, and a Source that
// never received closes at once.
func TestNewSourceAcceptsAValidConfig(t *testing.T) {
	s, err := franz.NewSource(franz.Config{Brokers: []string{"localhost:9092"}, GroupID: "g", Topic: "t"})
	if err != nil {
		t.Fatalf("NewSource = %v", err)
	}
	if err := s.Close(t.Context()); err != nil {
		t.Fatalf("Close of a Source that never received = %v", err)
	}
	if _, err := s.Receive(t.Context()); !errors.Is(err, broker.ErrSourceClosed) {
		t.Fatalf("Receive after Close = %v; want ErrSourceClosed", err)
	}
}

// TestRetryTopicNameIsTheKafkaAdapters: the tier topics are named as the
// kafka adapter names them (kafka.RetryTopicName), so both adapters share
// a group's tiers.
func TestRetryTopicNameIsTheKafkaAdapters(t *testing.T) {
	for _, c := range []struct {
		tier time.Duration
		want string
	}{
		{250 * time.Millisecond, "orders.retry.billing.250ms"},
		{time.Second, "orders.retry.billing.1s"},
		{90 * time.Second, "orders.retry.billing.90s"},
		{5 * time.Minute, "orders.retry.billing.5m"},
		{2 * time.Hour, "orders.retry.billing.2h"},
		{1500 * time.Millisecond, "orders.retry.billing.1500ms"},
	} {
		if got := franz.RetryTopicName("orders", "billing", c.tier); got != c.want {
			t.Errorf("RetryTopicName(orders, billing, %v) = %q; want %q", c.tier, got, c.want)
		}
	}
}
