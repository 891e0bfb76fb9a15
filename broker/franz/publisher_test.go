package franz_test

// The Publisher's tests run against the Kafka protocol (in-process kfake
// cluster): github.com/twmb/franz-go/pkg/kfake.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/franz"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.uber.org/goleak"
)

// TestMain checks that no test leaves a goroutine behind (the clients'
// and the clusters' included).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// pubCluster starts a one-broker kfake cluster with the given topics
// (name → partitions) and closes it when the test ends.
func pubCluster(t testing.TB, topics map[string]int32) *kfake.Cluster {
	t.Helper()
	return pubClusterN(t, 1, topics)
}

// pubClusterN is pubCluster with n brokers.
func pubClusterN(t testing.TB, n int, topics map[string]int32) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(n))
	if err != nil {
		t.Fatalf("kfake.NewCluster: %v", err)
	}
	t.Cleanup(c.Close)
	if len(topics) > 0 {
		cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
		if err != nil {
			t.Fatalf("kgo.NewClient: %v", err)
		}
		defer cl.Close()
		adm := kadm.NewClient(cl)
		for name, n := range topics {
			if _, err := adm.CreateTopic(context.Background(), n, 1, nil, name); err != nil {
				t.Fatalf("create topic %s: %v", name, err)
			}
		}
	}
	return c
}

func pubNew(t testing.TB, cfg franz.PublisherConfig) *franz.Publisher {
	t.Helper()
	p, err := franz.NewPublisher(cfg)
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = p.Close(ctx)
	})
	return p
}

// pubRead reads n records of topic from the start with a raw kgo client.
func pubRead(t testing.TB, c *kfake.Cluster, topic string, n int) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(50*time.Millisecond))
	if err != nil {
		t.Fatalf("kgo.NewClient: %v", err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []*kgo.Record
	for len(out) < n {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("read %s: %d of %d records before %v", topic, len(out), n, err)
		}
		fs.EachError(func(topic string, p int32, err error) { t.Logf("fetch %s/%d: %v", topic, p, err) })
		out = append(out, fs.Records()...)
	}
	return out
}

func TestPublisherConfigErrorsAreInvalidConfig(t *testing.T) {
	t.Parallel()
	ok := []string{"localhost:9092"}
	cases := []struct {
		name string
		cfg  franz.PublisherConfig
	}{
		{"no brokers", franz.PublisherConfig{}},
		{"a broker without a port", franz.PublisherConfig{Brokers: []string{"localhost"}}},
		{"a broker given as a URL with credentials", franz.PublisherConfig{Brokers: []string{"kafka://user:secret@host:9092"}}},
		{"a topic Kafka refuses", franz.PublisherConfig{Brokers: ok, Topic: "a topic"}},
		{"the topic ..", franz.PublisherConfig{Brokers: ok, Topic: ".."}},
		{"a negative Linger", franz.PublisherConfig{Brokers: ok, Linger: -time.Second}},
		{"a nil client option", franz.PublisherConfig{Brokers: ok, ClientOptions: []kgo.Opt{nil}}},
		{"a client option kgo refuses", franz.PublisherConfig{Brokers: ok, ClientOptions: []kgo.Opt{kgo.MaxBufferedRecords(0)}}},
	}
	for _, c := range cases {
		p, err := franz.NewPublisher(c.cfg)
		if !errors.Is(err, broker.ErrInvalidConfig) {
			if p != nil {
				_ = p.Close(context.Background())
			}
			t.Errorf("NewPublisher(%s) = %v; want an error wrapping broker.ErrInvalidConfig", c.name, err)
			continue
		}
		if c.name == "a broker given as a URL with credentials" && containsAny(err.Error(), "secret", "user") {
			t.Errorf("NewPublisher(%s) = %q; the error echoes the credentials", c.name, err)
		}
	}
}

func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// TestPublisherPutsKeysWhereKafkaGoDoes checks that a key lands on the
// partition the kafka-go adapter's default balancer (kafkago.Hash: FNV-1a,
// Sarama's arithmetic) picks, so that the two adapters keep one key on one
// partition. The table was computed with kafka-go v0.4.51's
// (&kafkago.Hash{}).Balance over partitions 0..n-1 (this module may not
// import kafka-go).
func TestPublisherPutsKeysWhereKafkaGoDoes(t *testing.T) {
	t.Parallel()
	keys := []string{"", "a", "b", "order-1", "order-2", "customer-42", "queuekit", "ü-key", "x", "long key with spaces 0123456789"}
	want := map[int32][]int32{
		3:  {0, 0, 0, 1, 1, 0, 2, 0, 1, 2},
		4:  {3, 0, 3, 1, 0, 2, 0, 0, 1, 2},
		7:  {2, 6, 5, 1, 0, 4, 1, 4, 0, 4},
		12: {3, 0, 3, 1, 4, 6, 8, 0, 1, 2},
	}
	topics := map[string]int32{}
	for n := range want {
		topics["keys-"+strconv.Itoa(int(n))] = n
	}
	c := pubCluster(t, topics)
	p := pubNew(t, franz.PublisherConfig{Brokers: c.ListenAddrs()})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for topic, n := range topics {
		msgs := make([]*broker.Message, len(keys))
		for i, k := range keys {
			msgs[i] = &broker.Message{Key: []byte(k), Body: []byte(strconv.Itoa(i))}
		}
		if err := p.Publish(ctx, topic, msgs...); err != nil {
			t.Fatalf("Publish(%s): %v", topic, err)
		}
		for _, r := range pubRead(t, c, topic, len(keys)) {
			i, _ := strconv.Atoi(string(r.Value))
			if r.Partition != want[n][i] {
				t.Errorf("%d partitions: key %q on partition %d; want %d (kafka-go's)", n, keys[i], r.Partition, want[n][i])
			}
		}
	}
}

// TestPublisherWritesEverythingInOrder checks key, body, headers (through
// Inject, which must not modify the caller's map), time and the order of
// one call's records on their partition.
func TestPublisherWritesEverythingInOrder(t *testing.T) {
	t.Parallel()
	c := pubCluster(t, map[string]int32{"orders": 3})
	type ctxKey struct{}
	p := pubNew(t, franz.PublisherConfig{Brokers: c.ListenAddrs(), Topic: "orders",
		Inject: func(ctx context.Context, h map[string]string) map[string]string {
			if h == nil {
				h = map[string]string{}
			}
			h["trace"], _ = ctx.Value(ctxKey{}).(string)
			return h
		}})
	ctx, cancel := context.WithTimeout(context.WithValue(context.Background(), ctxKey{}, "t-1"), 10*time.Second)
	defer cancel()
	const n = 50
	at := time.UnixMilli(1_700_000_000_000)
	header := map[string]string{"h": "v"}
	msgs := make([]*broker.Message, n)
	for i := range msgs {
		msgs[i] = &broker.Message{Key: []byte("k" + strconv.Itoa(i%2)), Body: []byte(strconv.Itoa(i)), Header: header, Time: at}
	}
	if err := p.Publish(ctx, "", msgs...); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if len(header) != 1 {
		t.Errorf("Publish modified the caller's header map: %v", header)
	}
	last := map[string]int{}
	for _, r := range pubRead(t, c, "orders", n) {
		i, err := strconv.Atoi(string(r.Value))
		if err != nil {
			t.Fatalf("record body %q", r.Value)
		}
		key := string(r.Key)
		if want := "k" + strconv.Itoa(i%2); key != want {
			t.Errorf("record %d key %q; want %q", i, key, want)
		}
		if prev, ok := last[key]; ok && i <= prev {
			t.Errorf("key %s: record %d after %d; want the call's order", key, i, prev)
		}
		last[key] = i
		got := map[string]string{}
		for _, h := range r.Headers {
			got[h.Key] = string(h.Value)
		}
		if want := map[string]string{"h": "v", "trace": "t-1"}; !maps.Equal(got, want) {
			t.Errorf("record %d headers %v; want %v", i, got, want)
		}
		if !r.Timestamp.Equal(at) {
			t.Errorf("record %d time %v; want %v", i, r.Timestamp, at)
		}
	}
}

// TestPublisherIsAnIdempotentProducerWithAcksAll looks at the produce
// requests the cluster receives.
func TestPublisherIsAnIdempotentProducerWithAcksAll(t *testing.T) {
	t.Parallel()
	c := pubCluster(t, map[string]int32{"t": 1})
	var mu sync.Mutex
	var acks []int16
	var producerIDs []int64
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		r := req.(*kmsg.ProduceRequest)
		mu.Lock()
		defer mu.Unlock()
		acks = append(acks, r.Acks)
		for _, tp := range r.Topics {
			for _, pp := range tp.Partitions {
				var b kmsg.RecordBatch
				if err := b.ReadFrom(pp.Records); err == nil {
					producerIDs = append(producerIDs, b.ProducerID)
				}
			}
		}
		return nil, nil, false
	})
	p := pubNew(t, franz.PublisherConfig{Brokers: c.ListenAddrs(), Topic: "t"})
	if err := p.Publish(context.Background(), "", &broker.Message{Body: []byte("x")}); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(acks) == 0 {
		t.Fatal("no produce request seen")
	}
	for i, a := range acks {
		if a != -1 {
			t.Errorf("produce request %d acks = %d; want -1 (all in-sync replicas)", i, a)
		}
	}
	for i, id := range producerIDs {
		if id < 0 {
			t.Errorf("batch %d producer id = %d; want an idempotent producer's id (>= 0)", i, id)
		}
	}
}

// TestPublisherUnknownTopicFailsAndThePublisherGoesOn publishes to a topic
// that does not exist (not created), then to one that does.
func TestPublisherUnknownTopicFailsAndThePublisherGoesOn(t *testing.T) {
	t.Parallel()
	c := pubCluster(t, map[string]int32{"exists": 1})
	p := pubNew(t, franz.PublisherConfig{Brokers: c.ListenAddrs()})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	err := p.Publish(ctx, "missing", &broker.Message{Body: []byte("x")})
	t.Logf("Publish to a missing topic returned after %v: %v", time.Since(start), err)
	if !errors.Is(err, kerr.UnknownTopicOrPartition) || ctx.Err() != nil {
		t.Fatalf("Publish(missing) = %v; want an error wrapping kerr.UnknownTopicOrPartition before the 30s deadline", err)
	}
	if err := p.Publish(ctx, "exists", &broker.Message{Body: []byte("y")}); err != nil {
		t.Fatalf("Publish(exists) after the failure = %v; want nil", err)
	}
	start = time.Now()
	err = p.Publish(ctx, "missing", &broker.Message{Body: []byte("x")})
	t.Logf("Publish to the missing topic again returned after %v", time.Since(start))
	if !errors.Is(err, kerr.UnknownTopicOrPartition) || ctx.Err() != nil {
		t.Fatalf("Publish(missing) again = %v; want an error wrapping kerr.UnknownTopicOrPartition", err)
	}
	// Once the topic is created, publishing to it works.
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := kadm.NewClient(cl).CreateTopic(ctx, 1, 1, nil, "missing"); err != nil {
		t.Fatalf("create topic missing: %v", err)
	}
	if err := p.Publish(ctx, "missing", &broker.Message{Body: []byte("x")}); err != nil {
		t.Errorf("Publish(missing) once created = %v; want nil", err)
	}
	if err := p.Publish(ctx, "bad name", &broker.Message{Body: []byte("z")}); !errors.Is(err, kerr.InvalidTopicException) {
		t.Errorf("Publish(bad name) = %v; want an error wrapping kerr.InvalidTopicException", err)
	}
	if err := p.Publish(ctx, "", &broker.Message{Body: []byte("z")}); err == nil {
		t.Error(`Publish("") without a default Topic = nil; want an error`)
	}
	if err := p.Publish(ctx, "exists", nil); err == nil {
		t.Error("Publish(nil message) = nil; want an error")
	}
}

// hangProduce makes the cluster take produce requests and never answer
// them, until the returned function is called.
func hangProduce(c *kfake.Cluster) (release func()) {
	var once sync.Once
	done := make(chan struct{})
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		select {
		case <-done:
			c.DropControl()
			return nil, nil, false
		default:
		}
		c.KeepControl()
		return nil, nil, true // no answer: the request waits for its timeout
	})
	return func() { once.Do(func() { close(done) }) }
}

func TestPublisherHonoursItsContext(t *testing.T) {
	t.Parallel()
	c := pubCluster(t, map[string]int32{"t": 1})
	p := pubNew(t, franz.PublisherConfig{Brokers: c.ListenAddrs(), Topic: "t"})

	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.Publish(cancelled, "", &broker.Message{Body: []byte("x")}); !errors.Is(err, context.Canceled) {
		t.Errorf("Publish(cancelled ctx) = %v; want an error wrapping context.Canceled", err)
	}

	release := hangProduce(c)
	defer release()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := p.Publish(ctx, "", &broker.Message{Body: []byte("y")})
	t.Logf("Publish against a broker that does not answer returned after %v: %v", time.Since(start), err)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Publish(300ms deadline, no answer) = %v; want an error wrapping context.DeadlineExceeded", err)
	}
	// The record is still waiting for its answer: a short Close gives up
	// on it (the cleanup's Close then returns at once).
	closeCtx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := p.Close(closeCtx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close(100ms) with a record unanswered = %v; want an error wrapping context.DeadlineExceeded", err)
	}
}

// TestPublisherCloseIsBoundedByItsContext closes a publisher whose publish
// waits for a broker that does not answer.
func TestPublisherCloseIsBoundedByItsContext(t *testing.T) {
	t.Parallel()
	c := pubCluster(t, map[string]int32{"t": 1})
	p, err := franz.NewPublisher(franz.PublisherConfig{Brokers: c.ListenAddrs(), Topic: "t"})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Publish(context.Background(), "", &broker.Message{Body: []byte("first")}); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	release := hangProduce(c)
	defer release()
	published := make(chan error, 1)
	go func() { published <- p.Publish(context.Background(), "", &broker.Message{Body: []byte("hung")}) }()
	time.Sleep(100 * time.Millisecond) // let the publish reach the broker

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = p.Close(ctx)
	t.Logf("Close(300ms) with a hung publish returned after %v: %v", time.Since(start), err)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close = %v; want an error wrapping context.DeadlineExceeded", err)
	}
	select {
	case err := <-published:
		if !errors.Is(err, broker.ErrPublisherClosed) {
			t.Errorf("the hung Publish = %v; want an error wrapping broker.ErrPublisherClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the hung Publish did not return within 10s of Close")
	}
	if err := p.Close(context.Background()); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("second Close = %v; want the first one's result", err)
	}
	if err := p.Publish(context.Background(), "", &broker.Message{Body: []byte("late")}); !errors.Is(err, broker.ErrPublisherClosed) {
		t.Errorf("Publish after Close = %v; want an error wrapping broker.ErrPublisherClosed", err)
	}
}

// TestPublisherCloseWaitsForPublishes publishes concurrently and closes:
// every Publish either succeeded (and its record is there) or says the
// publisher closed.
func TestPublisherCloseWaitsForPublishes(t *testing.T) {
	t.Parallel()
	c := pubCluster(t, map[string]int32{"t": 2})
	p, err := franz.NewPublisher(franz.PublisherConfig{Brokers: c.ListenAddrs(), Topic: "t", Linger: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- p.Publish(context.Background(), "", &broker.Message{Key: []byte(strconv.Itoa(i)), Body: []byte(strconv.Itoa(i))})
		}()
	}
	time.Sleep(5 * time.Millisecond)
	if err := p.Close(context.Background()); err != nil {
		t.Fatalf("Close = %v; want nil", err)
	}
	wg.Wait()
	close(errs)
	ok := 0
	for err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, broker.ErrPublisherClosed):
			t.Errorf("Publish during Close = %v; want nil or broker.ErrPublisherClosed", err)
		}
	}
	t.Logf("%d of %d publishes went through before Close", ok, n)
	if got := len(pubRead(t, c, "t", ok)); got < ok {
		t.Errorf("%d records; want at least the %d acknowledged", got, ok)
	}
}

func ExamplePublisher() {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "orders"))
	if err != nil {
		panic(err)
	}
	defer c.Close()

	p, err := franz.NewPublisher(franz.PublisherConfig{Brokers: c.ListenAddrs(), Topic: "orders"})
	if err != nil {
		panic(err)
	}
	defer p.Close(context.Background())

	m, _ := broker.NewJSON(map[string]int{"order": 42})
	m.Key = []byte("customer-7")
	err = p.Publish(context.Background(), "", m)
	fmt.Println(err)
	// Output: <nil>
}
