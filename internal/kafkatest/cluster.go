package kafkatest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Partitions is the number of partitions of every topic Cluster.Topic creates.
const Partitions = 4

// The headers both adapters write on a dead-lettered record besides the
// broker-neutral ones (broker.HeaderError...): where the record was read.
const (
	HeaderTopic     = "x-queuekit-topic"
	HeaderPartition = "x-queuekit-partition"
	HeaderOffset    = "x-queuekit-offset"
)

// A Cluster is the Kafka cluster one test runs against: an in-process kfake
// cluster, or the one named by QUEUEKIT_KAFKA_BROKERS. Its methods are safe
// for concurrent use; each opens and closes a client of its own.
type Cluster struct {
	// Brokers are the seed addresses to give a Source.
	Brokers []string
	// Fake is the kfake cluster, nil against a real cluster.
	Fake *kfake.Cluster
	// What says what the test runs against, for its log.
	What string
}

var topicSeq atomic.Int64

// NewCluster starts a one-broker kfake cluster that accepts session timeouts
// from 100ms, closed when t ends; or, when QUEUEKIT_KAFKA_BROKERS is set,
// returns that cluster.
func NewCluster(t testing.TB) *Cluster {
	t.Helper()
	if b := os.Getenv("QUEUEKIT_KAFKA_BROKERS"); b != "" {
		return &Cluster{Brokers: strings.Split(b, ","), What: "Kafka cluster at QUEUEKIT_KAFKA_BROKERS"}
	}
	c, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.GroupMinSessionTimeout(100*time.Millisecond),
	)
	if err != nil {
		t.Fatalf("kfake.NewCluster: %v", err)
	}
	t.Cleanup(c.Close)
	return &Cluster{Brokers: c.ListenAddrs(), Fake: c, What: "Kafka protocol (in-process kfake cluster)"}
}

// NeedFake skips t unless the cluster is kfake (whose request control the
// fault-injection scenarios use).
func (c *Cluster) NeedFake(t testing.TB) {
	t.Helper()
	if c.Fake == nil {
		t.Skip("needs kfake's request control (fault injection); skipped against a real cluster")
	}
}

// client opens a kgo client and its admin client on the cluster; the caller
// closes the kgo client.
func (c *Cluster) client(t testing.TB, opts ...kgo.Opt) (*kgo.Client, *kadm.Client) {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(c.Brokers...)}, opts...)...)
	if err != nil {
		t.Fatalf("kgo.NewClient: %v", err)
	}
	return cl, kadm.NewClient(cl)
}

func ctx10s() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 10*time.Second)
}

// Topic creates a fresh topic named after name with Partitions partitions,
// and its dead-letter topic (the topic's name + ".dlt", one partition).
func (c *Cluster) Topic(t testing.TB, name string) string {
	t.Helper()
	topic := fmt.Sprintf("%s-%d-%d", name, os.Getpid(), topicSeq.Add(1))
	c.CreateTopic(t, topic, Partitions)
	c.CreateTopic(t, topic+".dlt", 1)
	return topic
}

// CreateTopic creates topic with the given number of partitions.
func (c *Cluster) CreateTopic(t testing.TB, topic string, partitions int32) {
	t.Helper()
	cl, adm := c.client(t)
	defer cl.Close()
	ctx, cancel := ctx10s()
	defer cancel()
	resp, err := adm.CreateTopics(ctx, partitions, 1, nil, topic)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		t.Fatalf("CreateTopics %s: %v", topic, err)
	}
}

// Produce writes records from..from+n-1 to topic: record i has key key(i)
// and body strconv.Itoa(i), partitioned by key.
func (c *Cluster) Produce(t testing.TB, topic string, from, n int, key func(i int) string) {
	t.Helper()
	cl, _ := c.client(t, kgo.DefaultProduceTopic(topic), kgo.ProducerLinger(time.Millisecond))
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const chunk = 5000
	for i := from; i < from+n; i += chunk {
		end := min(i+chunk, from+n)
		recs := make([]*kgo.Record, 0, end-i)
		for j := i; j < end; j++ {
			recs = append(recs, &kgo.Record{Key: []byte(key(j)), Value: []byte(strconv.Itoa(j))})
		}
		if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
			t.Fatalf("producing to %s: %v", topic, err)
		}
	}
}

// EndOffsets returns the end offset (high-water mark) of each partition of
// topic.
func (c *Cluster) EndOffsets(t testing.TB, topic string) map[int]int64 {
	t.Helper()
	cl, adm := c.client(t)
	defer cl.Close()
	ctx, cancel := ctx10s()
	defer cancel()
	listed, err := adm.ListEndOffsets(ctx, topic)
	if err == nil {
		err = listed.Error()
	}
	if err != nil {
		t.Fatalf("ListEndOffsets %s: %v", topic, err)
	}
	out := map[int]int64{}
	for p, o := range listed[topic] {
		out[int(p)] = o.Offset
	}
	return out
}

// Committed returns the offsets group committed on each of topic's
// Partitions partitions, -1 where it committed none.
func (c *Cluster) Committed(t testing.TB, group, topic string) map[int]int64 {
	t.Helper()
	cl, adm := c.client(t)
	defer cl.Close()
	ctx, cancel := ctx10s()
	defer cancel()
	resp, err := adm.FetchOffsets(ctx, group)
	if err == nil {
		err = resp.Error()
	}
	if errors.Is(err, kerr.GroupIDNotFound) {
		resp, err = nil, nil // a group that never committed
	}
	if err != nil {
		t.Fatalf("FetchOffsets %s: %v", group, err)
	}
	out := map[int]int64{}
	for p := range Partitions {
		out[p] = -1
		if o, ok := resp.Lookup(topic, int32(p)); ok {
			out[p] = o.At
		}
	}
	return out
}

// OnlyMember returns the member ID of the group's single member, and fails
// t if the group has another number of members.
func (c *Cluster) OnlyMember(t testing.TB, group string) string {
	t.Helper()
	cl, adm := c.client(t)
	defer cl.Close()
	ctx, cancel := ctx10s()
	defer cancel()
	groups, err := adm.DescribeGroups(ctx, group)
	if err == nil {
		err = groups.Error()
	}
	if err != nil {
		t.Fatalf("DescribeGroups %s: %v", group, err)
	}
	g, ok := groups[group]
	if !ok || len(g.Members) != 1 {
		t.Fatalf("DescribeGroups(%s) = %+v; want one group with one member", group, groups)
	}
	return g.Members[0].MemberID
}

// A Record is a record read back from a topic.
type Record struct {
	Partition int
	Offset    int64
	Key, Body string
	Headers   map[string]string
}

// Read reads topic's partition 0 (a dead-letter topic has one) from its
// start until done says the records read so far are enough, and returns
// them; it fails t if done is not satisfied within 10s.
func (c *Cluster) Read(t testing.TB, topic string, done func([]Record) bool) []Record {
	t.Helper()
	cl, _ := c.client(t,
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {0: kgo.NewOffset().AtStart()}}),
		kgo.FetchMaxWait(100*time.Millisecond),
	)
	defer cl.Close()
	ctx, cancel := ctx10s()
	defer cancel()
	var out []Record
	for !done(out) {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("reading %s: %v (got %d records: %+v)", topic, ctx.Err(), len(out), out)
		}
		for _, e := range fs.Errors() {
			t.Logf("reading %s: partition %d: %v", topic, e.Partition, e.Err)
		}
		fs.EachRecord(func(r *kgo.Record) {
			h := map[string]string{}
			for _, x := range r.Headers {
				h[x.Key] = string(x.Value)
			}
			out = append(out, Record{Partition: int(r.Partition), Offset: r.Offset, Key: string(r.Key), Body: string(r.Value), Headers: h})
		})
	}
	return out
}

// Logger returns the logger the scenarios give sources and runtimes:
// discarding, or slog.Default with QUEUEKIT_KAFKA_DEBUG set.
func Logger() *slog.Logger {
	if os.Getenv("QUEUEKIT_KAFKA_DEBUG") != "" {
		return slog.Default()
	}
	return slog.New(slog.DiscardHandler)
}
