package kafka

import (
	"fmt"
	"log/slog"
	"math"
	"net"
	"strings"
	"time"

	"github.com/queuekit/queuekit/broker"
	kafkago "github.com/segmentio/kafka-go"
)

// Ordering says which records of a partition may be handled at the same time.
type Ordering int

const (
	// ByPartition handles the records of a partition one at a time, in
	// offset order. It is the default.
	ByPartition Ordering = iota
	// ByKey handles records with the same key in offset order, and records
	// with different keys of the same partition concurrently (up to
	// Config.MaxInFlight per partition). Records without a key share one lane.
	ByKey
)

// String returns "by-partition" or "by-key".
func (o Ordering) String() string {
	switch o {
	case ByPartition:
		return "by-partition"
	case ByKey:
		return "by-key"
	}
	return fmt.Sprintf("Ordering(%d)", int(o))
}

// Isolation says which records written by transactional producers a Source
// hands out.
type Isolation int

const (
	// ReadCommitted hands out the records of committed transactions only,
	// and no record of a transaction still open (the fetch stops at the
	// partition's last stable offset). It is the default.
	ReadCommitted Isolation = iota
	// ReadUncommitted hands out every data record as soon as it is written,
	// including those of transactions that are later aborted.
	ReadUncommitted
)

// String returns "read-committed" or "read-uncommitted".
func (i Isolation) String() string {
	switch i {
	case ReadCommitted:
		return "read-committed"
	case ReadUncommitted:
		return "read-uncommitted"
	}
	return fmt.Sprintf("Isolation(%d)", int(i))
}

func (i Isolation) level() kafkago.IsolationLevel {
	if i == ReadUncommitted {
		return kafkago.ReadUncommitted
	}
	return kafkago.ReadCommitted
}

// Config configures a Source. Brokers, GroupID and Topic are required; every
// other zero field means the documented default. NewSource validates the
// config and returns an error wrapping broker.ErrInvalidConfig instead of
// panicking as kafka-go's NewReader does.
//
// The defaults are tuned so that a rebalance or Close never waits for a
// pending fetch (kafka-go's default fetch MaxWait is 10 s).
type Config struct {
	// Brokers are the bootstrap broker addresses, host:port.
	Brokers []string
	// GroupID is the consumer group. With RetryTopics, the Source also
	// joins one group per tier, GroupID + ".retry." + the tier (e.g.
	// "billing.retry.30s"): those names share the cluster's name space of
	// consumer groups, so no other consumer may use them (another
	// application's group of that name would take the tier's partitions and
	// commit their offsets).
	GroupID string
	// Topic is the topic to consume: a name Kafka accepts (1 to 249
	// characters of a-z, A-Z, 0-9, '.', '_' and '-', not "." or "..").
	Topic string

	// Dialer opens the group's broker connections. Set its TLS and
	// SASLMechanism fields for TLS and SASL; its TLS, SASL, ClientID,
	// Timeout and DialFunc are used for every other connection too (the
	// fetches, the dead-letter writer, the lag client). Default: a dialer
	// with a 10 s timeout.
	Dialer *kafkago.Dialer

	// Ordering: ByPartition (default) or ByKey.
	Ordering Ordering
	// Isolation: ReadCommitted (default) or ReadUncommitted. Transaction
	// markers (control records) are never handed out.
	Isolation Isolation
	// MaxInFlight bounds, per partition, the records queued for handling
	// and not yet settled (waiting or being handled). When a partition
	// reaches it, that partition is not fetched until records settle
	// (backpressure); the partition's fetcher holds at most two more fetch
	// responses: the rest of the one it is queueing and the next one,
	// fetched ahead (see MaxBytes). Default 256.
	//
	// With ByKey, records after an unfinished one may finish first; they
	// cannot be committed until it finishes. So that a slow record cannot
	// make a partition be handled ever further past the committed offset
	// (all of which a crash would redeliver), at most 4×MaxInFlight records
	// of a partition are fetched past its oldest unfinished record.
	MaxInFlight int

	// CommitInterval is the longest time a handled record waits before its
	// offset is committed. Default 1 s.
	CommitInterval time.Duration
	// CommitBatch commits as soon as this many records were settled since
	// the last commit. Default 1000. Committing every record is about 20×
	// slower on Kafka.
	CommitBatch int

	// RebalanceDrainTimeout bounds the drain at a rebalance: how long a
	// generation that is ending waits for the records it handed out to be
	// settled before it commits and gives its partitions up. Records still
	// unsettled then are fenced and redelivered to the partition's next
	// owner. The final commit of a generation (at a rebalance or at Close)
	// is retried on retriable errors within the same budget. It must be less than SessionTimeout
	// and RebalanceTimeout, because kafka-go stops heartbeating once a
	// generation ends. It is not a shutdown budget: the ctx given to Close
	// (by consumer.Consumer.Shutdown, its own) bounds a shutdown. Default: a
	// third of the smaller of the two.
	RebalanceDrainTimeout time.Duration

	// HeartbeatInterval is how often the member heartbeats; a member learns
	// of a rebalance on its next heartbeat. Default 3 s.
	HeartbeatInterval time.Duration
	// SessionTimeout is how long the coordinator waits for a heartbeat
	// before it declares the member dead. Default 30 s.
	SessionTimeout time.Duration
	// RebalanceTimeout is how long the coordinator waits for members to
	// rejoin during a rebalance. Default 30 s.
	RebalanceTimeout time.Duration
	// JoinGroupBackoff is the wait before rejoining after a failed join.
	// Default 1 s.
	JoinGroupBackoff time.Duration
	// Timeout bounds each request to the group coordinator. Default 5 s.
	Timeout time.Duration
	// PartitionWatchInterval is how often the member checks the topic's
	// partition count. When it grew (partitions were added, or the topic
	// appeared, or was recreated with more partitions), the member ends its
	// generation and rejoins, so that the group assigns the partitions at
	// once instead of at the next unrelated rebalance. A topic that is
	// missing never ends a generation: Status reports it until it appears.
	// Default 5 s.
	PartitionWatchInterval time.Duration

	// StartOffset is where a partition without a committed offset starts:
	// kafkago.FirstOffset (default) or kafkago.LastOffset.
	StartOffset int64
	// MaxWait is the longest a fetch waits for new records at the end of a
	// partition. Close and a rebalance do not wait for it: they cancel the
	// pending fetches. Default 250 ms (kafka-go's default is 10 s).
	MaxWait time.Duration
	// MinBytes and MaxBytes bound the size of a fetch response (one
	// partition). Kafka returns the first record batch of a response whole
	// even when it is larger than MaxBytes. Defaults 1 and 1 MB.
	MinBytes, MaxBytes int

	// DeadLetterTopic receives records that failed for good, with the
	// reason in their headers. Default: Topic + ".dlt". The topic must exist
	// (Source.DeclareTopology creates it) unless the cluster creates topics
	// automatically.
	DeadLetterTopic string
	// DeadLetterMaxBytes, when set, is the largest dead letter (value, key
	// and headers) the dead-letter writer sends: a larger one fails with
	// ErrDeadLetterUnwritable without being sent. Zero (the default) sets
	// no limit of the client's own: each dead letter is sized from the
	// record it carries, and the dead-letter topic's max.message.bytes is
	// the only limit. MaxBytes cannot bound it: Kafka returns a record
	// batch up to the consumed topic's max.message.bytes whole, whatever
	// MaxBytes says. Each dead letter is a request of its own, so that a
	// broker's size limit applies to one record at a time.
	DeadLetterMaxBytes int

	// RetryTopics turns on non-blocking delayed retries: one retry topic
	// per delay tier, named RetryTopicName(Topic, GroupID, tier) (Topic +
	// ".retry." + GroupID + ".1s", ".30s", …: the retry topics are the
	// group's own, so GroupID must then be valid in a topic name: a-z,
	// A-Z, 0-9, '.', '_' and '-'). A record requeued with a delay
	// (broker.DelayedRequeuer; the consumer runtime does it for an error
	// from retry.After) is written to the topic of the shortest tier at
	// least as long as the delay (the longest tier for a longer delay),
	// with its next attempt number, due time and origin in headers, and
	// its offset is marked handled: the partition moves on at once. The
	// Source consumes the tier topics too and hands a retry record out,
	// as a record of Topic with its original ID and the Attempt from its
	// header, once its delay has passed. See "Retry topics" in the package
	// documentation for what this does to per-key order.
	//
	// Each tier must be above 0, at most a week, in whole milliseconds,
	// and given once; the order does not matter. The tier topics must
	// exist (Source.DeclareTopology creates them). Each tier is consumed
	// in a consumer group of its own, GroupID + ".retry." + the tier
	// ("billing.retry.30s"): a group name like any other, which no other
	// consumer of the cluster may use (nor may another Source's GroupID be
	// one of them, e.g. GroupID "billing.retry.30s" next to "billing"
	// with a tier of 30s).
	//
	// Default: none. A delayed requeue then holds the record's lane — its
	// partition with ByPartition, its key with ByKey — for the delay, in
	// this process ("blocking" mode): per-key order is kept, and Attempt
	// counts in this process only.
	RetryTopics []time.Duration

	// Topology is how Source.DeclareTopology creates the topic, its
	// dead-letter topic and its retry topics. The Source does not create
	// topics by itself.
	Topology Topology

	// Logger receives lifecycle and commit failures. Default slog.Default().
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.Dialer == nil {
		c.Dialer = &kafkago.Dialer{Timeout: 10 * time.Second, DualStack: true}
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = 256
	}
	if c.CommitInterval == 0 {
		c.CommitInterval = time.Second
	}
	if c.CommitBatch == 0 {
		c.CommitBatch = 1000
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = 3 * time.Second
	}
	if c.SessionTimeout == 0 {
		c.SessionTimeout = 30 * time.Second
	}
	if c.RebalanceTimeout == 0 {
		c.RebalanceTimeout = 30 * time.Second
	}
	if c.RebalanceDrainTimeout == 0 {
		c.RebalanceDrainTimeout = min(c.SessionTimeout, c.RebalanceTimeout) / 3
	}
	if c.JoinGroupBackoff == 0 {
		c.JoinGroupBackoff = time.Second
	}
	if c.Timeout == 0 {
		c.Timeout = 5 * time.Second
	}
	if c.PartitionWatchInterval == 0 {
		c.PartitionWatchInterval = 5 * time.Second
	}
	if c.StartOffset == 0 {
		c.StartOffset = kafkago.FirstOffset
	}
	if c.MaxWait == 0 {
		c.MaxWait = 250 * time.Millisecond
	}
	if c.MinBytes == 0 {
		c.MinBytes = 1
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = 1 << 20
	}
	if c.DeadLetterTopic == "" && c.Topic != "" {
		c.DeadLetterTopic = c.Topic + ".dlt"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: kafka: "+format, append([]any{broker.ErrInvalidConfig}, args...)...)
}

func validateBrokers(brokers []string) error {
	if len(brokers) == 0 {
		return invalid("no brokers")
	}
	for i, b := range brokers {
		// Say which entry is wrong without echoing it: an address list
		// copied from a URL could carry credentials.
		if strings.Contains(b, "@") || strings.Contains(b, "://") {
			return invalid("broker %d is not host:port (a URL or credentials?)", i)
		}
		if _, _, err := net.SplitHostPort(b); err != nil {
			return invalid("broker %d is not host:port", i)
		}
	}
	return nil
}

// validTopicName returns nil if name is a topic name Kafka accepts: 1 to
// 249 characters of [a-zA-Z0-9._-], and not "." or "..". Otherwise the
// error wraps kafkago.InvalidTopic (what the broker would answer) and
// quotes the name.
func validTopicName(name string) error {
	bad := len(name) == 0 || len(name) > 249 || name == "." || name == ".."
	for i := 0; i < len(name) && !bad; i++ {
		c := name[i]
		bad = !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-')
	}
	if bad {
		return fmt.Errorf("%.60q is not a valid Kafka topic name (1 to 249 characters of a-z, A-Z, 0-9, '.', '_' and '-', not \".\" or \"..\"): %w",
			name, kafkago.InvalidTopic)
	}
	return nil
}

// topicsCollide reports whether a and b are names Kafka refuses to have
// both: equal once every '.' is read as '_' (their metric names collide).
func topicsCollide(a, b string) bool {
	return strings.ReplaceAll(a, ".", "_") == strings.ReplaceAll(b, ".", "_")
}

// invalidTopic is the constructor error for a topic name Kafka refuses.
func invalidTopic(field, name string) error {
	if err := validTopicName(name); err != nil {
		return fmt.Errorf("%w: kafka: %s: %w", broker.ErrInvalidConfig, field, err)
	}
	return nil
}

// validate checks a defaulted config.
func (c *Config) validate() error {
	const maxMillis = time.Duration(1<<31-1) * time.Millisecond
	if err := validateBrokers(c.Brokers); err != nil {
		return err
	}
	switch {
	case c.GroupID == "":
		return invalid("empty GroupID")
	case c.Topic == "":
		return invalid("empty Topic")
	case invalidTopic("Topic", c.Topic) != nil:
		return invalidTopic("Topic", c.Topic)
	case invalidTopic("DeadLetterTopic", c.DeadLetterTopic) != nil:
		// The default, Topic + ".dlt", is too long for a Topic of more
		// than 245 characters: the error says DeadLetterTopic.
		return invalidTopic("DeadLetterTopic (default: Topic + \".dlt\")", c.DeadLetterTopic)
	case c.DeadLetterTopic == c.Topic:
		return invalid("DeadLetterTopic %q is the consumed topic", c.Topic)
	case topicsCollide(c.DeadLetterTopic, c.Topic):
		return invalid("DeadLetterTopic %q and Topic %q differ only by '.' against '_', which Kafka treats as the same name (their metric names collide): one of them cannot be created", c.DeadLetterTopic, c.Topic)
	case c.Ordering != ByPartition && c.Ordering != ByKey:
		return invalid("unknown Ordering %d", int(c.Ordering))
	case c.Isolation != ReadCommitted && c.Isolation != ReadUncommitted:
		return invalid("unknown Isolation %d", int(c.Isolation))
	case c.MaxInFlight < 1:
		return invalid("MaxInFlight %d, want at least 1", c.MaxInFlight)
	case c.CommitBatch < 1:
		return invalid("CommitBatch %d, want at least 1", c.CommitBatch)
	case c.MinBytes < 1 || c.MaxBytes < c.MinBytes:
		return invalid("MinBytes %d / MaxBytes %d, want 1 <= MinBytes <= MaxBytes", c.MinBytes, c.MaxBytes)
	case c.MaxBytes > maxFetchBytes:
		// kafka-go's Conn refuses larger fetches on every call: accepting
		// one here would leave a source that never consumes.
		return invalid("MaxBytes %d, want at most %d", c.MaxBytes, maxFetchBytes)
	case c.DeadLetterMaxBytes < 0 || c.DeadLetterMaxBytes > math.MaxInt32:
		return invalid("DeadLetterMaxBytes %d, want 0 (no limit of the client's own) or 1…%d", c.DeadLetterMaxBytes, math.MaxInt32)
	case c.Topology.Partitions < 0 || c.Topology.Partitions > math.MaxInt32:
		return invalid("Topology.Partitions %d, want 0 (the broker's default) or 1…%d", c.Topology.Partitions, math.MaxInt32)
	case c.Topology.ReplicationFactor < 0 || c.Topology.ReplicationFactor > math.MaxInt16:
		return invalid("Topology.ReplicationFactor %d, want 0 (the broker's default) or 1…%d", c.Topology.ReplicationFactor, math.MaxInt16)
	case c.StartOffset != kafkago.FirstOffset && c.StartOffset != kafkago.LastOffset:
		return invalid("StartOffset %d, want kafkago.FirstOffset or kafkago.LastOffset", c.StartOffset)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"CommitInterval", c.CommitInterval}, {"RebalanceDrainTimeout", c.RebalanceDrainTimeout},
		{"HeartbeatInterval", c.HeartbeatInterval}, {"SessionTimeout", c.SessionTimeout},
		{"RebalanceTimeout", c.RebalanceTimeout}, {"JoinGroupBackoff", c.JoinGroupBackoff},
		{"Timeout", c.Timeout}, {"MaxWait", c.MaxWait},
		{"PartitionWatchInterval", c.PartitionWatchInterval},
	} {
		if d.v <= 0 || d.v > maxMillis {
			return invalid("%s %v out of range", d.name, d.v)
		}
	}
	switch {
	case c.validateRetry() != nil:
		return c.validateRetry()
	case c.HeartbeatInterval >= c.SessionTimeout:
		return invalid("HeartbeatInterval %v must be less than SessionTimeout %v", c.HeartbeatInterval, c.SessionTimeout)
	case c.RebalanceDrainTimeout >= c.SessionTimeout || c.RebalanceDrainTimeout >= c.RebalanceTimeout:
		return invalid("RebalanceDrainTimeout %v must be less than SessionTimeout %v and RebalanceTimeout %v",
			c.RebalanceDrainTimeout, c.SessionTimeout, c.RebalanceTimeout)
	case c.MaxWait >= c.RebalanceDrainTimeout:
		return invalid("MaxWait %v must be less than RebalanceDrainTimeout %v", c.MaxWait, c.RebalanceDrainTimeout)
	}
	return nil
}

// transport builds a kafka-go Transport (for the writers, the fetchers and
// the lag client) with the dialer's TLS, SASL and client ID, dialing
// through cs so that Close can end its connections.
func transport(d *kafkago.Dialer, cs *conns) *kafkago.Transport {
	t := &kafkago.Transport{
		TLS:         d.TLS,
		SASL:        d.SASLMechanism,
		ClientID:    d.ClientID,
		DialTimeout: d.Timeout,
		Dial:        cs.Dial,
	}
	if d.Timeout == 0 {
		t.DialTimeout = 10 * time.Second
	}
	return t
}

// maxFetchBytes is the largest MaxBytes accepted: 1 GiB, well under the
// limit kafka-go's Conn enforces (math.MaxInt32 less its fetch overhead).
const maxFetchBytes = 1 << 30
