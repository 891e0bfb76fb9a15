package franz

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// PublisherConfig configures a Publisher. Brokers is required; every other
// zero field means the documented default.
type PublisherConfig struct {
	// Brokers are the bootstrap broker addresses, host:port.
	Brokers []string
	// Topic is where Publish writes when its topic argument is "". Default
	// none: such a Publish is refused. It must be a name Kafka accepts: 1 to
	// 249 characters of a-z, A-Z, 0-9, '.', '_' and '-', not "." or "..".
	Topic string
	// ClientOptions are passed to kgo.NewClient first: TLS
	// (kgo.DialTLSConfig), SASL (kgo.SASL), kgo.ClientID, kgo.Dialer,
	// kgo.RecordDeliveryTimeout and the like. NewPublisher refuses
	// (ErrInvalidConfig, naming the option) kgo.TransactionalID,
	// kgo.DisableIdempotentWrite, kgo.RequiredAcks other than
	// kgo.AllISRAcks(), kgo.DefaultProduceTopicAlways (messages would go
	// to the default topic), kgo.ManualFlushing (nothing would be sent),
	// the consuming and group options, and
	// kgo.SeedBrokers, kgo.ProducerLinger and kgo.RecordPartitioner (the
	// Publisher sets them). The Publisher's own options (seed brokers,
	// acks, partitioner, linger, unknown-topic retries) come after them
	// and win.
	ClientOptions []kgo.Opt
	// Linger is how long a partition's records wait for more to batch with
	// before they are sent. Default 0: sent as soon as possible, batching
	// what queued meanwhile.
	Linger time.Duration
	// Inject, if set, is called for every message with the Publish context
	// and a copy of the message's headers, and returns the headers to send.
	// Use it to propagate trace context or a correlation id from ctx. If it
	// panics, Publish returns an error and writes none of its messages.
	Inject func(ctx context.Context, header map[string]string) map[string]string
}

// A Publisher writes messages to Kafka through a franz-go kgo.Client and
// implements broker.Publisher. It is an idempotent producer that waits for
// every in-sync replica (acks=all). It places a keyed message on the
// partition the kafka-go adapter's Publisher (and Sarama's default) would,
// so that both adapters keep one key on one partition.
//
// A Publisher is safe for concurrent use; concurrent Publish calls share
// batches. After Close, Publish returns an error wrapping
// broker.ErrPublisherClosed. The zero value is not usable: make one with
// NewPublisher.
type Publisher struct {
	cl     *kgo.Client
	topic  string
	inject func(ctx context.Context, header map[string]string) map[string]string

	// mu orders the registration of a Publish call (calls.Add) before
	// Close's wait (calls.Wait): once closed is set, no call registers.
	mu     sync.Mutex
	closed bool
	calls  sync.WaitGroup

	closeOnce sync.Once
	closeDone chan struct{}
	closeErr  error // written before closeDone is closed
}

var _ broker.Publisher = (*Publisher)(nil)

// unknownTopicRetries is how many metadata answers saying "unknown topic"
// the client takes before it fails a topic's records: enough to see a topic
// just created, few enough that a publish to a missing topic fails promptly
// instead of hanging. Measured on kfake: with 2, the first publish to a
// missing topic failed after 0.5 s and the next after 0.75 s; with kgo's
// default of 4, after 1 s and then 15.5 s (later retries wait for the
// client's metadata min age, 5 s).
const unknownTopicRetries = 2

// NewPublisher returns a Publisher. It returns an error wrapping
// broker.ErrInvalidConfig when the config is invalid. It does not connect:
// the first Publish does.
func NewPublisher(cfg PublisherConfig) (*Publisher, error) {
	if err := validateBrokers(cfg.Brokers); err != nil {
		return nil, err
	}
	if cfg.Topic != "" {
		if err := checkTopicName(cfg.Topic); err != nil {
			return nil, fmt.Errorf("%w: franz: publisher Topic: %w", broker.ErrInvalidConfig, err)
		}
	}
	if cfg.Linger < 0 {
		return nil, invalid("publisher Linger %v, want >= 0", cfg.Linger)
	}
	if err := checkClientOptions("publisher ", cfg.ClientOptions, publisherRefused); err != nil { // options.go
		return nil, err
	}
	opts := append(slices.Clone(cfg.ClientOptions),
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.RecordPartitioner(keyPartitioner()),
		kgo.ProducerLinger(cfg.Linger),
		kgo.UnknownTopicRetries(unknownTopicRetries),
	)
	cl, err := newClient(opts)
	if err != nil {
		return nil, fmt.Errorf("%w: franz: publisher ClientOptions: %w", broker.ErrInvalidConfig, err)
	}
	return &Publisher{cl: cl, topic: cfg.Topic, inject: cfg.Inject, closeDone: make(chan struct{})}, nil
}

// newClient is kgo.NewClient, with a panic from an option (a user's option
// function) turned into an error: library code does not panic on user
// input.
func newClient(opts []kgo.Opt) (cl *kgo.Client, err error) {
	defer func() {
		if r := recover(); r != nil {
			cl, err = nil, fmt.Errorf("an option panicked: %v", r)
		}
	}()
	return kgo.NewClient(opts...)
}

// callInject calls inject and turns a panic of it into an error: user code
// panicking must not panic out of Publish (as with the rabbitmq adapter).
// Inject runs before anything of the call is sent, so nothing is written.
func callInject(ctx context.Context, inject func(context.Context, map[string]string) map[string]string, h map[string]string) (out map[string]string, err error) {
	defer func() {
		if r := recover(); r != nil {
			out, err = nil, fmt.Errorf("franz: publish: PublisherConfig.Inject panicked: %v; nothing was published", r)
		}
	}()
	return inject(ctx, h), nil
}

// keyPartitioner returns the partitioner of the Publisher: a keyed record
// goes to partition abs(int32(fnv1a32(key)) % n), as kafka-go's default
// kafkago.Hash balancer and Sarama's default partitioner place it, so that
// the franz-go and kafka-go adapters put one key on the same partition. A
// record without a key goes to a partition kept for a whole batch (kgo's
// sticky partitioning).
func keyPartitioner() kgo.Partitioner {
	return kgo.StickyKeyPartitioner(kgo.SaramaCompatHasher(fnv1a32))
}

func fnv1a32(b []byte) uint32 {
	h := fnv.New32a()
	h.Write(b) // a hash.Hash never returns an error
	return h.Sum32()
}

// Publish implements broker.Publisher: it writes msgs to topic (the
// config's Topic when topic is ""), in order per partition, and returns
// when every in-sync replica has acknowledged every one, or with an error.
// A message's Key picks its partition (the same partition the kafka-go adapter picks); its Header
// becomes Kafka record headers (passed through PublisherConfig.Inject, if
// set); a zero Time means now. Message.Topic is ignored: topic decides.
// Message.ID is not sent: a Kafka record is identified by its topic,
// partition and offset, which is the ID a Source gives it; put a
// deduplication key in Header.
//
// ctx bounds the whole call: when it ends first, Publish returns an error
// wrapping ctx's, and the records already handed to the client may still be
// written (they are not failed, so that other calls' records batched with
// them are not failed with them). Without a deadline, Publish waits as long
// as the client retries: for ever by default, or up to a
// kgo.RecordDeliveryTimeout given in ClientOptions.
//
// A topic that does not exist is not created: the error wraps
// kerr.UnknownTopicOrPartition and names the topic, after a few metadata
// requests (a second or so). A topic name Kafka refuses is refused before
// anything is sent. On another error some messages may have been written.
// After Close, the error wraps broker.ErrPublisherClosed.
func (p *Publisher) Publish(ctx context.Context, topic string, msgs ...*broker.Message) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return fmt.Errorf("franz: publish: %w", broker.ErrPublisherClosed)
	}
	p.calls.Add(1)
	p.mu.Unlock()
	defer p.calls.Done()

	if len(msgs) == 0 {
		return nil
	}
	if topic == "" {
		topic = p.topic
	}
	if topic == "" {
		return errors.New("franz: publish: no topic given and the publisher has no default Topic")
	}
	if err := checkTopicName(topic); err != nil {
		return fmt.Errorf("franz: publish: %w", err)
	}
	recs := make([]*kgo.Record, len(msgs))
	for i, m := range msgs {
		if m == nil {
			return fmt.Errorf("franz: publish: message %d is nil", i)
		}
		h := m.Header
		if p.inject != nil {
			var err error
			if h, err = callInject(ctx, p.inject, maps.Clone(h)); err != nil { // the caller's map is not modified
				return err
			}
		}
		recs[i] = &kgo.Record{Topic: topic, Key: m.Key, Value: m.Body, Timestamp: m.Time, Headers: recordHeaders(h)}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("franz: publish to %s: nothing was written: %w", topic, err)
	}

	w := &produceWait{left: int64(len(recs)), done: make(chan struct{})}
	// The records carry rctx, not ctx: kgo fails every buffered record of a
	// partition when the first record of its batch has a cancelled context,
	// which would fail other calls' records. rctx is cancelled with ctx only
	// while this call hands records over (a full buffer makes Produce wait,
	// and that wait must end with ctx); once every record is handed over,
	// stop disarms it and the records are written whatever ctx does.
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, cancel)
	for _, r := range recs {
		p.cl.Produce(rctx, r, w.promise)
	}
	stop()

	select {
	case <-w.done:
	case <-ctx.Done():
		select {
		case <-w.done: // finished meanwhile: its outcome is known
		default:
			return fmt.Errorf("franz: publish to %s: %d of %d messages not yet acknowledged: %w",
				topic, atomic.LoadInt64(&w.left), len(recs), ctx.Err())
		}
	}
	err := w.err // written before done was closed
	switch {
	case err == nil:
		return nil
	case errors.Is(err, kgo.ErrClientClosed):
		return fmt.Errorf("franz: publish to %s: %w: %w", topic, broker.ErrPublisherClosed, err)
	case errors.Is(err, kerr.UnknownTopicOrPartition):
		return fmt.Errorf("franz: publish: topic %s does not exist (the publisher does not create topics; see Source.DeclareTopology): %w", topic, err)
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		// rctx was cancelled with ctx while records were handed over.
		return fmt.Errorf("franz: publish to %s: %w", topic, ctx.Err())
	}
	return fmt.Errorf("franz: publish to %s: %d of %d messages failed, the first with: %w", topic, w.failed, len(recs), err)
}

// produceWait gathers the outcomes of one Publish call's records. kgo calls
// promise serially, from one goroutine, so err and failed need no lock;
// done is closed after the last outcome, which publishes them to Publish.
type produceWait struct {
	left   int64 // records without an outcome, atomic
	err    error // the first failure
	failed int
	done   chan struct{}
}

func (w *produceWait) promise(_ *kgo.Record, err error) {
	if err != nil {
		if w.err == nil {
			w.err = err
		}
		w.failed++
	}
	if atomic.AddInt64(&w.left, -1) == 0 {
		close(w.done)
	}
}

// Close implements broker.Publisher: Publish refuses new messages at once;
// Close waits for the Publish calls in progress and the records they left
// buffered (lingering records are sent at once), then closes the client.
// It is bounded by ctx: when ctx ends first, the client is closed under the
// records still waiting (their Publish calls return an error wrapping
// broker.ErrPublisherClosed; they may or may not have arrived), its
// goroutines end, and Close returns an error wrapping ctx's. It is
// idempotent; a second call waits for the first, or for its own ctx.
func (p *Publisher) Close(ctx context.Context) error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	first := false
	p.closeOnce.Do(func() {
		first = true
		calls := make(chan struct{})
		go func() { p.calls.Wait(); close(calls) }()
		select {
		case <-calls:
			// Records of calls that returned early (their ctx ended) may
			// still be buffered.
			if err := p.cl.Flush(ctx); err != nil {
				p.closeErr = fmt.Errorf("franz: close publisher: buffered records were cut short: %w", err)
			}
		case <-ctx.Done():
			p.closeErr = fmt.Errorf("franz: close publisher: publishes in progress were cut short: %w", ctx.Err())
		}
		// Closing fails every record left, which ends the calls still
		// waiting for theirs.
		p.cl.Close()
		<-calls
		close(p.closeDone)
	})
	if !first {
		select {
		case <-p.closeDone:
		case <-ctx.Done():
			return fmt.Errorf("franz: close publisher: %w", ctx.Err())
		}
	}
	return p.closeErr
}

func recordHeaders(h map[string]string) []kgo.RecordHeader {
	if len(h) == 0 {
		return nil
	}
	out := make([]kgo.RecordHeader, 0, len(h))
	for k, v := range h {
		out = append(out, kgo.RecordHeader{Key: k, Value: []byte(v)})
	}
	return out
}

// checkTopicName is validTopicName with the error the broker would answer,
// kerr.InvalidTopicException, wrapped too.
func checkTopicName(name string) error {
	if err := validTopicName(name); err != nil {
		return fmt.Errorf("%w: %w", err, kerr.InvalidTopicException)
	}
	return nil
}
