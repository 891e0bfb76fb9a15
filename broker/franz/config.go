package franz

import (
	"fmt"
	"log/slog"
	"math"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker"
)

// Ordering says which records of a partition may be handled at the same
// time. It means what kafka.Ordering means in the kafka-go adapter.
type Ordering int

const (
	// ByPartition handles the records of a partition one at a time, in
	// offset order. It is the default.
	ByPartition Ordering = iota
	// ByKey handles records with the same key in offset order, and records
	// with different keys of the same partition concurrently (up to
	// Config.MaxInFlight per partition). Records without a key share one
	// lane.
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

// Values of Config.StartOffset: where a partition without a committed offset
// starts. They are the values of kafka-go's FirstOffset and LastOffset, so
// that a Config converts from the kafka adapter's unchanged.
const (
	FirstOffset int64 = -2
	LastOffset  int64 = -1
)

// Config configures a Source. Brokers, GroupID and Topic are required; every
// other zero field means the documented default. NewSource validates the
// config and returns an error wrapping broker.ErrInvalidConfig.
type Config struct {
	// Brokers are the bootstrap broker addresses, host:port.
	Brokers []string
	// GroupID is the consumer group. With RetryTopics, the Source also
	// joins one group per tier, GroupID + ".retry." + the tier (e.g.
	// "billing.retry.30s"), and GroupID is part of the retry topics'
	// names, so it must be valid in a topic name.
	GroupID string
	// Topic is the topic to consume: a name Kafka accepts (1 to 249
	// characters of a-z, A-Z, 0-9, '.', '_' and '-', not "." or "..").
	Topic string

	// ClientOptions are passed to every kgo.Client the Source makes: TLS
	// (kgo.DialTLSConfig), SASL (kgo.SASL), kgo.ClientID, kgo.Dialer,
	// kgo.InstanceID and the like. NewSource refuses (ErrInvalidConfig,
	// naming the option) those that would break the Source's guarantees
	// or that a field of Config sets: the consuming and group options
	// (kgo.ConsumerGroup, ConsumeTopics, ConsumeRegex, ConsumePartitions,
	// the AutoCommit options, OnPartitionsAssigned/Revoked/Lost, …),
	// kgo.TransactionalID, kgo.DisableIdempotentWrite, kgo.RequiredAcks
	// other than kgo.AllISRAcks(), kgo.DefaultProduceTopicAlways,
	// kgo.ManualFlushing, kgo.ShareGroup, kgo.WithContext (the Source owns
	// its clients' lifetime), kgo.GroupProtocol, kgo.ServerSideBalancer
	// (KIP-848 groups), kgo.InstanceID when RetryTopics is set (static
	// membership is for Sources without retry topics), and the options of
	// Brokers, Logger, Isolation, Balancers, the timeouts, MaxWait,
	// MaxBytes, StartOffset and PartitionWatchInterval. The others are
	// applied first, and the Source's own options after them. The check
	// reads an option's kgo constructor from the name the compiler gives
	// its closure; an option whose name it cannot read is let through (a
	// limit: the forms seen — func values, nested closures, generic
	// helpers — are read), and the Source's own options, applied after
	// it, override the group, consuming and acknowledgement settings the
	// Source relies on.
	ClientOptions []kgo.Opt

	// Balancers are the group balancers this member supports, in order of
	// preference. Default: kgo.CooperativeStickyBalancer() alone, so that a
	// rebalance moves (and drains) only the partitions that change owner;
	// the others keep flowing. With an eager balancer (kgo.RangeBalancer,
	// kgo.RoundRobinBalancer, kgo.StickyBalancer) every rebalance drains
	// every partition. The coordinator picks the first balancer every
	// member of the group supports and refuses a member with none in
	// common (INCONSISTENT_GROUP_PROTOCOL): kafka-go members (package
	// kafka) offer range and round-robin only, so a group shared with
	// them needs kgo.RangeBalancer() here, e.g.
	// []kgo.GroupBalancer{kgo.CooperativeStickyBalancer(), kgo.RangeBalancer()}
	// during a rolling switch (the package documentation, "Switching from
	// the kafka-go adapter").
	Balancers []kgo.GroupBalancer

	// Ordering: ByPartition (default) or ByKey.
	Ordering Ordering
	// Isolation: ReadCommitted (default) or ReadUncommitted. Transaction
	// markers (control records) are never handed out; their offsets are
	// committed past.
	Isolation Isolation
	// MaxInFlight bounds, per partition, the records on its lanes: queued
	// for handling or being handled, not yet settled. Records polled beyond
	// it wait in the partition's backlog and join the lanes as records
	// settle. The Source polls kgo only while some partition runs low, so
	// that kgo, which fetches one response ahead, stops fetching while the
	// handlers are behind; a partition whose backlog still grows past
	// three of its polls (its lanes are slow while the others go on) stops
	// being fetched (kgo's PauseFetchPartitions) until its backlog is down
	// to MaxInFlight. So a partition holds at most MaxInFlight records on
	// its lanes plus about four fetch responses (MaxBytes each). With
	// ByKey, at most 4×MaxInFlight records of a partition are taken past
	// its oldest unfinished record, so that one slow record does not let
	// the partition be handled ever further past its committed offset.
	// Default 256.
	MaxInFlight int

	// CommitInterval is the longest time a handled record waits before its
	// offset is committed. Default 1 s.
	CommitInterval time.Duration
	// CommitBatch commits as soon as this many records were settled since
	// the last commit. Default 1000.
	CommitBatch int

	// RebalanceDrainTimeout bounds the drain of partitions that are taken
	// away at a rebalance: how long the Source waits for the records of
	// those partitions it handed out to be settled before it commits and
	// gives the partitions up. Records still unsettled then are fenced
	// (their settlements return broker.ErrStaleDelivery, their Lease is
	// cancelled) and redelivered to the partition's next owner. It must be
	// less than SessionTimeout and RebalanceTimeout. Default: a third of
	// the smaller of the two.
	RebalanceDrainTimeout time.Duration

	// HeartbeatInterval is how often the member heartbeats. Default 3 s.
	HeartbeatInterval time.Duration
	// SessionTimeout is how long the coordinator waits for a heartbeat
	// before it declares the member dead. Default 45 s.
	SessionTimeout time.Duration
	// RebalanceTimeout is how long the coordinator waits for members to
	// rejoin during a rebalance. Default 60 s.
	RebalanceTimeout time.Duration
	// PartitionWatchInterval is how often the member checks the topic's
	// partition count, as in the kafka adapter: partitions added to the
	// topic are assigned (and consumed) within about this long. It is
	// kgo's metadata refresh interval (kgo.MetadataMaxAge, and
	// kgo.MetadataMinAge at most 5 s and at most it; kgo bounds them to
	// 10 ms…1 h, and so does the Source, silently); the Source's values
	// win over those options in ClientOptions. Default 5 s (kgo's own
	// default is 5 min).
	PartitionWatchInterval time.Duration

	// StartOffset is where a partition without a committed offset starts:
	// FirstOffset (default) or LastOffset.
	StartOffset int64
	// MaxWait is the longest a fetch waits for new records. Default 250 ms.
	MaxWait time.Duration
	// MaxBytes is the most a fetch asks for per partition (Kafka returns
	// a first record batch whole even when it is larger). Default 1 MB.
	MaxBytes int

	// DeadLetterTopic receives records that failed for good, with the
	// reason and their origin in their headers. Default: Topic + ".dlt".
	// The topic must exist (Source.DeclareTopology creates it) unless the
	// cluster creates topics automatically.
	DeadLetterTopic string

	// RetryTopics turns on non-blocking delayed retries: one retry topic
	// per delay tier, named RetryTopicName(Topic, GroupID, tier) (Topic +
	// ".retry." + GroupID + ".1s", ".30s", …: the retry topics are the
	// group's own). A record settled with RequeueAfter (the runtime does,
	// from retry.After) is written to the topic of the shortest tier at
	// least as long as the delay (the longest tier for a longer delay),
	// with its next attempt, due time and origin in headers, and its
	// partition moves on; the Source consumes the tier topics too and
	// hands a retry record out, as the original record with the Attempt of
	// its header, once its delay has passed. Topic names, headers and tier
	// groups are the kafka adapter's: members of both adapters share
	// them (in a group of members of both, Balancers must hold one that
	// kafka-go's members support too, e.g. kgo.RangeBalancer(); the tier
	// groups use the same Balancers). See "Retry topics" in the package documentation. Default: none
	// (a delayed requeue holds the record's lane in this process for the
	// delay).
	//
	// Each tier must be above 0, at most a week, in whole milliseconds,
	// and given once; the order does not matter. The tier topics must
	// exist (Source.DeclareTopology creates them). Each tier is consumed
	// in a consumer group of its own, GroupID + ".retry." + the tier
	// ("billing.retry.30s"): a group name like any other, which no other
	// consumer may use.
	RetryTopics []time.Duration

	// Topology is how Source.DeclareTopology creates the topic and its
	// dead-letter topic. The Source does not create topics by itself.
	Topology Topology

	// Logger receives lifecycle events, commit failures and kgo's warnings
	// and errors. Default slog.Default().
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
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
		c.SessionTimeout = 45 * time.Second
	}
	if c.RebalanceTimeout == 0 {
		c.RebalanceTimeout = 60 * time.Second
	}
	if c.PartitionWatchInterval == 0 {
		c.PartitionWatchInterval = 5 * time.Second
	}
	if c.RebalanceDrainTimeout == 0 && c.SessionTimeout > 0 && c.RebalanceTimeout > 0 {
		c.RebalanceDrainTimeout = min(c.SessionTimeout, c.RebalanceTimeout) / 3
	}
	if c.StartOffset == 0 {
		c.StartOffset = FirstOffset
	}
	if c.MaxWait == 0 {
		c.MaxWait = 250 * time.Millisecond
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = 1 << 20
	}
	if c.DeadLetterTopic == "" && c.Topic != "" {
		c.DeadLetterTopic = c.Topic + ".dlt"
	}
	if len(c.Balancers) == 0 {
		c.Balancers = []kgo.GroupBalancer{kgo.CooperativeStickyBalancer()}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: franz: "+format, append([]any{broker.ErrInvalidConfig}, args...)...)
}

// validateBrokers checks the bootstrap addresses: each must be exactly
// host:port, the host a name of letters, digits, '.', '_' and '-' or an IP
// address ([…] for IPv6), the port 1…65535 in decimal digits. An error says
// which entry is wrong (by index) without echoing it: an address copied
// from a URL or a connection string may carry credentials. The addresses
// that pass cannot make kgo's own errors (which this package wraps) carry
// anything but a host and a port.
func validateBrokers(brokers []string) error {
	if len(brokers) == 0 {
		return invalid("no brokers")
	}
	for i, b := range brokers {
		if strings.Contains(b, "@") || strings.Contains(b, "://") {
			return invalid("broker %d is not host:port (a URL or credentials?)", i)
		}
		host, port, err := net.SplitHostPort(b)
		if err != nil || !validHost(host) || !validPort(port) {
			return invalid("broker %d is not host:port (a host name or IP address, and a port 1…65535)", i)
		}
	}
	return nil
}

// validHost reports whether host is an IP address or a host name of
// letters, digits, '.', '_' and '-'.
func validHost(host string) bool {
	if host == "" || len(host) > 253 {
		return false
	}
	if net.ParseIP(host) != nil {
		return true
	}
	for i := 0; i < len(host); i++ {
		c := host[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// validPort reports whether port is 1…65535 in decimal digits only.
func validPort(port string) bool {
	if port == "" || len(port) > 5 {
		return false
	}
	n := 0
	for i := 0; i < len(port); i++ {
		c := port[i]
		if c < '0' || c > '9' {
			return false
		}
		n = n*10 + int(c-'0')
	}
	return n >= 1 && n <= 65535
}

// validTopicName returns nil if name is a topic name Kafka accepts: 1 to
// 249 characters of [a-zA-Z0-9._-], and not "." or "..".
func validTopicName(name string) error {
	bad := len(name) == 0 || len(name) > 249 || name == "." || name == ".."
	for i := 0; i < len(name) && !bad; i++ {
		c := name[i]
		bad = !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-')
	}
	if bad {
		return fmt.Errorf("%.60q is not a valid Kafka topic name (1 to 249 characters of a-z, A-Z, 0-9, '.', '_' and '-', not \".\" or \"..\")", name)
	}
	return nil
}

// topicsCollide reports whether a and b are names Kafka refuses to have
// both: equal once every '.' is read as '_' (their metric names collide).
func topicsCollide(a, b string) bool {
	return strings.ReplaceAll(a, ".", "_") == strings.ReplaceAll(b, ".", "_")
}

// maxMillis is the longest duration Kafka's int32 millisecond fields hold.
const maxMillis = time.Duration(math.MaxInt32) * time.Millisecond

// validate checks a defaulted config.
func (c *Config) validate() error {
	if err := validateBrokers(c.Brokers); err != nil {
		return err
	}
	topicErr := func(field, name string) error {
		if err := validTopicName(name); err != nil {
			return fmt.Errorf("%w: franz: %s: %w", broker.ErrInvalidConfig, field, err)
		}
		return nil
	}
	switch {
	case c.GroupID == "":
		return invalid("empty GroupID")
	case c.Topic == "":
		return invalid("empty Topic")
	}
	if err := topicErr("Topic", c.Topic); err != nil {
		return err
	}
	if err := topicErr("DeadLetterTopic (default: Topic + \".dlt\")", c.DeadLetterTopic); err != nil {
		return err
	}
	switch {
	case c.DeadLetterTopic == c.Topic:
		return invalid("DeadLetterTopic %q is the consumed topic", c.Topic)
	case topicsCollide(c.DeadLetterTopic, c.Topic):
		return invalid("DeadLetterTopic %q and Topic %q differ only by '.' against '_', which Kafka treats as the same name", c.DeadLetterTopic, c.Topic)
	case c.Ordering != ByPartition && c.Ordering != ByKey:
		return invalid("unknown Ordering %d", int(c.Ordering))
	case c.Isolation != ReadCommitted && c.Isolation != ReadUncommitted:
		return invalid("unknown Isolation %d", int(c.Isolation))
	case c.MaxInFlight < 1 || c.MaxInFlight > 1<<20:
		return invalid("MaxInFlight %d, want 1…%d", c.MaxInFlight, 1<<20)
	case c.CommitBatch < 1:
		return invalid("CommitBatch %d, want at least 1", c.CommitBatch)
	case c.MaxBytes < 1 || c.MaxBytes > 1<<30:
		return invalid("MaxBytes %d, want 1…%d", c.MaxBytes, 1<<30)
	case c.Topology.Partitions < 0 || c.Topology.Partitions > math.MaxInt32:
		return invalid("Topology.Partitions %d, want 0 (the broker's default) or 1…%d", c.Topology.Partitions, math.MaxInt32)
	case c.Topology.ReplicationFactor < 0 || c.Topology.ReplicationFactor > math.MaxInt16:
		return invalid("Topology.ReplicationFactor %d, want 0 (the broker's default) or 1…%d", c.Topology.ReplicationFactor, math.MaxInt16)
	case c.StartOffset != FirstOffset && c.StartOffset != LastOffset:
		return invalid("StartOffset %d, want FirstOffset or LastOffset", c.StartOffset)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"HeartbeatInterval", c.HeartbeatInterval}, {"SessionTimeout", c.SessionTimeout},
		{"RebalanceTimeout", c.RebalanceTimeout}, {"RebalanceDrainTimeout", c.RebalanceDrainTimeout},
		{"CommitInterval", c.CommitInterval}, {"MaxWait", c.MaxWait},
		{"PartitionWatchInterval", c.PartitionWatchInterval},
	} {
		if d.v <= 0 || d.v > maxMillis {
			return invalid("%s %v out of range", d.name, d.v)
		}
	}
	if err := c.validateRetry(); err != nil {
		return err
	}
	switch {
	case c.HeartbeatInterval >= c.SessionTimeout:
		return invalid("HeartbeatInterval %v must be less than SessionTimeout %v", c.HeartbeatInterval, c.SessionTimeout)
	case c.RebalanceDrainTimeout >= c.SessionTimeout || c.RebalanceDrainTimeout >= c.RebalanceTimeout:
		return invalid("RebalanceDrainTimeout %v must be less than SessionTimeout %v and RebalanceTimeout %v",
			c.RebalanceDrainTimeout, c.SessionTimeout, c.RebalanceTimeout)
	}
	for i, b := range c.Balancers {
		if b == nil {
			return invalid("Balancers[%d] is nil", i)
		}
	}
	if err := checkClientOptions("", c.ClientOptions, sourceRefused); err != nil { // options.go
		return err
	}
	if len(c.RetryTopics) > 0 {
		return refuseInstanceIDWithRetry(c.ClientOptions) // options.go
	}
	return nil
}

// maxRetryTier bounds a retry tier: a week, as in the kafka adapter.
const maxRetryTier = 7 * 24 * time.Hour

// validateRetry checks Config.RetryTopics, sorted by NewSource: the rules
// of the kafka adapter, so that a Config valid for one is valid for the
// other and both name the tier topics alike.
func (c *Config) validateRetry() error {
	for i, d := range c.RetryTopics {
		switch {
		case d <= 0 || d > maxRetryTier:
			return invalid("RetryTopics[%d] %v, want a delay above 0 and at most %v", i, d, maxRetryTier)
		case d%time.Millisecond != 0:
			return invalid("RetryTopics[%d] %v, want whole milliseconds", i, d)
		case i > 0 && d == c.RetryTopics[i-1]:
			return invalid("RetryTopics: %v given twice", d)
		}
	}
	if len(c.RetryTopics) == 0 {
		return nil
	}
	// The group is part of the tier topics' names.
	if err := validTopicName(c.GroupID); err != nil {
		return invalid("RetryTopics: the retry topics are named Topic + \".retry.\" + GroupID + \".\" + tier, and GroupID %.60q holds characters (or is longer than) Kafka accepts in a topic name (a-z, A-Z, 0-9, '.', '_' and '-')", c.GroupID)
	}
	for _, d := range c.RetryTopics {
		name := RetryTopicName(c.Topic, c.GroupID, d)
		if err := validTopicName(name); err != nil {
			return fmt.Errorf("%w: franz: RetryTopics (Topic + \".retry.\" + GroupID + \".\" + tier): %w", broker.ErrInvalidConfig, err)
		}
		switch {
		case topicsCollide(name, c.DeadLetterTopic):
			return invalid("retry topic %s and DeadLetterTopic %s are the same name for Kafka ('.' and '_' collide)", name, c.DeadLetterTopic)
		case topicsCollide(name, c.Topic):
			return invalid("retry topic %s and Topic %s are the same name for Kafka ('.' and '_' collide)", name, c.Topic)
		}
	}
	return nil
}

// RetryTopicName returns the name of the retry topic of topic and group for
// a delay tier: topic + ".retry." + group + "." + the tier ("1s", "30s",
// "5m", "2h", "250ms"). The names are those of the kafka adapter
// (kafka.RetryTopicName), so that both adapters share a group's tiers.
func RetryTopicName(topic, group string, tier time.Duration) string {
	return topic + ".retry." + group + "." + tierName(tier)
}

func tierName(d time.Duration) string {
	switch {
	case d%time.Hour == 0:
		return strconv.FormatInt(int64(d/time.Hour), 10) + "h"
	case d%time.Minute == 0:
		return strconv.FormatInt(int64(d/time.Minute), 10) + "m"
	case d%time.Second == 0:
		return strconv.FormatInt(int64(d/time.Second), 10) + "s"
	}
	return strconv.FormatInt(int64(d/time.Millisecond), 10) + "ms"
}

// normalize copies what a caller could change after NewSource and sorts
// the retry tiers.
func (c *Config) normalize() {
	c.Brokers = slices.Clone(c.Brokers)
	c.ClientOptions = slices.Clone(c.ClientOptions)
	c.Balancers = slices.Clone(c.Balancers)
	if len(c.RetryTopics) > 0 {
		c.RetryTopics = slices.Sorted(slices.Values(c.RetryTopics))
	}
}
