package franz

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/queuekit/queuekit/broker"
)

// The dead-letter operations keep the formats of the kafka-go adapter
// (package github.com/queuekit/queuekit/broker/kafka) byte for byte: the
// dead-letter ids "<partition>:<offset>", the List cursors, the consumer
// group DeadLetterTopic + DeadLetterGroupSuffix, the done topic
// DeadLetterTopic + DeadLetterDoneSuffix with its progress and done markers
// and their fingerprints, and the headers of a redriven copy. A team that
// switches adapters keeps its dead letters' state, and the two adapters may
// work on one dead-letter topic at once.

// DeadLetterConfig configures DeadLetters. Brokers and Topic are required.
type DeadLetterConfig struct {
	// Brokers are the bootstrap broker addresses, host:port.
	Brokers []string
	// ClientOptions are passed to kgo.NewClient first: TLS
	// (kgo.DialTLSConfig), SASL (kgo.SASL), kgo.ClientID, kgo.Dialer and
	// the like. NewDeadLetters refuses (ErrInvalidConfig, naming the
	// option) the consuming and group options, kgo.TransactionalID,
	// kgo.DisableIdempotentWrite, kgo.RequiredAcks other than
	// kgo.AllISRAcks(), kgo.DefaultProduceTopicAlways, kgo.ManualFlushing
	// and kgo.SeedBrokers. The options DeadLetters needs
	// (seed brokers, acks, partitioning, no consuming) come after them and
	// win.
	ClientOptions []kgo.Opt
	// Topic is the topic whose dead letters these are (Config.Topic of the
	// Source). It names the default DeadLetterTopic.
	Topic string
	// DeadLetterTopic is the dead-letter topic to read. Default: Topic +
	// ".dlt", as Config.DeadLetterTopic.
	DeadLetterTopic string
	// Logger receives the failures that do not fail a call (a stale
	// done-marker that could not be cleaned up). Default slog.Default().
	Logger *slog.Logger
}

// Suffixes of the names that keep the progress of Redrive and Purge on a
// dead-letter topic, the same as the kafka-go adapter's.
const (
	// DeadLetterGroupSuffix: the consumer group DeadLetterTopic +
	// DeadLetterGroupSuffix commits, per partition of the dead-letter
	// topic, the offset before which every dead letter was redriven or
	// purged.
	DeadLetterGroupSuffix = ".queuekit"
	// DeadLetterDoneSuffix: the compacted topic DeadLetterTopic +
	// DeadLetterDoneSuffix holds one record per dead letter redriven or
	// purged past that offset (key "<partition>:<offset>").
	DeadLetterDoneSuffix = ".queuekit-done"
)

// DeadLetters reads, redrives and purges the dead letters of a topic: the
// records a Source wrote to its dead-letter topic. It implements
// broker.DeadLetters. A dead letter's ID is "<partition>:<offset>" of its
// record in the dead-letter topic; Partition and Offset are where the
// failed record was consumed from (HeaderPartition, HeaderOffset).
//
// List and Count read the dead-letter topic by offset, with Fetch requests
// of their own and no consumer group (read-committed: records of aborted
// transactions are not dead letters): nothing is consumed or moved, and a
// listing is the same twice. A List cursor is opaque.
//
// Kafka cannot delete one record, so Redrive and Purge record which dead
// letters are done next to the topic, in Kafka itself, where every process
// and every later call finds it, in the compacted topic DeadLetterTopic +
// DeadLetterDoneSuffix (one partition; created on first use): progress
// markers "progress:<partition>:<offset>" (every dead letter of the
// partition before the offset is done; the highest marker counts, so the
// progress never moves back) and done markers "<partition>:<offset>" for
// dead letters done out of order, valued "<redriven|purged> <time>
// <fingerprint>", the fingerprint naming the record (a hash of its
// timestamp, key and value), so that a marker left from a dead-letter
// topic deleted and recreated hides nothing. The consumer group
// DeadLetterTopic + DeadLetterGroupSuffix gets the progress as its
// committed offsets, for the tools that show a group's lag. The done topic
// must keep its markers: a call refuses one whose cleanup.policy is not
// "compact" alone (error wrapping broker.ErrInvalidConfig). These are the
// kafka-go adapter's names and formats: the two adapters share the state
// of a dead-letter topic, one after the other or at once.
//
// A Redrive handles the selected dead letters in batches of up to 256: it
// writes the copies and waits until the brokers acknowledged them
// (acks=all), and only then writes the markers and commits. A crash or a
// cancelled ctx between the two leaves those dead letters in place: the
// next Redrive sends them again. So a dead letter is redriven at least
// once, sometimes twice (two Redrives at once may both send it), never
// lost. A call cut short while writing its markers does not know whether
// they reached the broker: its error names the dead letters whose outcome
// is unknown, and they are not in Done.
//
// It is safe for concurrent use. Each call makes a kgo.Client of its own
// and closes it before it returns, so a DeadLetters holds nothing between
// calls and needs no Close; Close refuses new calls and ends those in
// progress. Make one with NewDeadLetters, or take a Source's with
// Source.DeadLetters. The zero value refuses every call.
type DeadLetters struct {
	cfg       DeadLetterConfig
	dlt       string
	group     string
	doneTopic string
	log       *slog.Logger

	// mu guards the fields below it. A call registers in begin (active,
	// idle) and takes the abort context of that moment; stop cancels it
	// to end the calls in progress, and waits for idle.
	mu     sync.Mutex
	closed bool
	active int           // calls in progress
	idle   chan struct{} // closed when active drops to 0; nil while it is 0

	abortCtx context.Context
	abortFn  context.CancelFunc

	// policyOK is set once the done topic's cleanup.policy was found to
	// be compact (or could not be read: see checkDonePolicy), or this
	// instance created the topic itself.
	policyOK bool

	// now is the clock of the redrive headers and done markers.
	now func() time.Time
}

var _ broker.DeadLetters = (*DeadLetters)(nil)

// ErrDeadLettersClosed is wrapped by the error of a call after Close.
var ErrDeadLettersClosed = errors.New("franz: dead letters closed")

// NewDeadLetters returns the DeadLetters of cfg.Topic. It returns an error
// wrapping broker.ErrInvalidConfig when cfg is invalid. It does not
// connect: each call does.
func NewDeadLetters(cfg DeadLetterConfig) (*DeadLetters, error) {
	cfg.Brokers = slices.Clone(cfg.Brokers)
	cfg.ClientOptions = slices.Clone(cfg.ClientOptions)
	if err := validateBrokers(cfg.Brokers); err != nil {
		return nil, err
	}
	if err := checkClientOptions("dead letters: ", cfg.ClientOptions, deadLettersRefused); err != nil { // options.go
		return nil, err
	}
	if cfg.Topic == "" {
		return nil, invalid("dead letters: empty Topic")
	}
	if err := checkTopicName(cfg.Topic); err != nil {
		return nil, fmt.Errorf("%w: franz: dead letters: Topic: %w", broker.ErrInvalidConfig, err)
	}
	if cfg.DeadLetterTopic == "" {
		cfg.DeadLetterTopic = cfg.Topic + ".dlt"
	}
	if err := checkTopicName(cfg.DeadLetterTopic); err != nil {
		return nil, fmt.Errorf("%w: franz: dead letters: DeadLetterTopic (default: Topic + \".dlt\"): %w", broker.ErrInvalidConfig, err)
	}
	if cfg.DeadLetterTopic == cfg.Topic {
		return nil, invalid("dead letters: DeadLetterTopic %q is the consumed topic", cfg.Topic)
	}
	done := cfg.DeadLetterTopic + DeadLetterDoneSuffix
	if err := checkTopicName(done); err != nil {
		return nil, invalid("dead letters: DeadLetterTopic is too long for its done topic (DeadLetterTopic + %q): %v", DeadLetterDoneSuffix, err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	abortCtx, abortFn := context.WithCancel(context.Background())
	return &DeadLetters{
		cfg:       cfg,
		dlt:       cfg.DeadLetterTopic,
		group:     cfg.DeadLetterTopic + DeadLetterGroupSuffix,
		doneTopic: done,
		log:       cfg.Logger.With("dead_letter_topic", cfg.DeadLetterTopic),
		abortCtx:  abortCtx,
		abortFn:   abortFn,
		now:       time.Now,
	}, nil
}

// deadLetterState is a Source's DeadLetters, made on first use from the
// Source's config. The zero value is ready.
type deadLetterState struct {
	mu  sync.Mutex
	d   *DeadLetters
	err error
}

// get returns the DeadLetters of cfg, made on the first call.
func (st *deadLetterState) get(cfg *Config) (*DeadLetters, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.d == nil && st.err == nil {
		st.d, st.err = NewDeadLetters(DeadLetterConfig{
			Brokers:         cfg.Brokers,
			ClientOptions:   cfg.ClientOptions,
			Topic:           cfg.Topic,
			DeadLetterTopic: cfg.DeadLetterTopic,
			Logger:          cfg.Logger,
		})
	}
	return st.d, st.err
}

// close is the Source's Close for its DeadLetters: it waits for the calls
// in progress and, when ctx ends first, cancels them (they return at once)
// and returns an error wrapping ctx's. It does not refuse later calls: as
// with the kafka-go adapter, a Source's dead letters work after its Close
// (each call has a client of its own, so nothing is left open).
func (st *deadLetterState) close(ctx context.Context) error {
	st.mu.Lock()
	d := st.d
	st.mu.Unlock()
	if d == nil {
		return nil
	}
	return d.stop(ctx, false)
}

// DeadLetters implements broker.DeadLetterSource: the dead letters of the
// Source's topic, in Config.DeadLetterTopic, reached with the Source's
// brokers and ClientOptions. It returns the same value on every call. It
// shares no connection with the Source: it works before the first Receive
// and after Close too. The Source's Close waits for the calls in progress,
// and cancels them when its ctx ends first.
func (s *Source) DeadLetters() broker.DeadLetters {
	d, err := s.dl.get(&s.cfg)
	if err != nil {
		// NewSource validated the same fields: this cannot happen, but a
		// nil would make the caller panic.
		return failedDeadLetters{err}
	}
	return d
}

var _ broker.DeadLetterSource = (*Source)(nil)

// failedDeadLetters answers every call with err.
type failedDeadLetters struct{ err error }

func (f failedDeadLetters) List(context.Context, broker.DeadLetterQuery) (broker.DeadLetterPage, error) {
	return broker.DeadLetterPage{Items: []broker.DeadLetter{}}, f.err
}
func (f failedDeadLetters) Count(context.Context, broker.DeadLetterFilter) (int, error) {
	return 0, f.err
}
func (f failedDeadLetters) Redrive(context.Context, broker.DeadLetterSelection, broker.RedriveOptions) (broker.DeadLetterResult, error) {
	return broker.DeadLetterResult{Done: []string{}}, f.err
}
func (f failedDeadLetters) Purge(context.Context, broker.DeadLetterSelection, bool) (broker.DeadLetterResult, error) {
	return broker.DeadLetterResult{Done: []string{}}, f.err
}

// Close refuses new calls (their error wraps ErrDeadLettersClosed) and
// waits for the calls in progress. When ctx ends first, it cancels them;
// they return at once (their clients closed), and Close returns an error
// wrapping ctx's. What a cancelled Redrive or Purge did not record as done
// stays a dead letter (a copy may already be in the source: see Redrive).
// Close is idempotent.
func (d *DeadLetters) Close(ctx context.Context) error {
	return d.stop(ctx, true)
}

// stop waits for the calls in progress, and cancels them when ctx ends
// first. With refuse, later calls are refused (Close); without, they run
// as usual once those in progress ended (a Source's Close).
func (d *DeadLetters) stop(ctx context.Context, refuse bool) error {
	if d.dlt == "" {
		return nil // the zero value: no call ever began
	}
	d.mu.Lock()
	if refuse {
		d.closed = true
	}
	idle, abort := d.idle, d.abortFn
	d.mu.Unlock()
	if idle == nil {
		return nil
	}
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
	}
	abort()
	// The calls begun meanwhile took the cancelled context too, and end at
	// once; idle is closed when the last of them does.
	<-idle
	if !refuse {
		d.mu.Lock()
		if d.abortCtx.Err() != nil {
			d.abortCtx, d.abortFn = context.WithCancel(context.Background())
		}
		d.mu.Unlock()
	}
	what := "close dead letters"
	if !refuse {
		what = "close the source's dead letters"
	}
	return fmt.Errorf("franz: %s: calls in progress were cancelled: %w", what, ctx.Err())
}

// errZeroDeadLetters is the error of every call of a DeadLetters not made
// by NewDeadLetters.
var errZeroDeadLetters = fmt.Errorf("%w: franz: DeadLetters not made by NewDeadLetters (or Source.DeadLetters)", broker.ErrInvalidConfig)

// dlOp is one call: its ctx and its own client.
type dlOp struct {
	d   *DeadLetters
	ctx context.Context
	cl  *kgo.Client
	adm *kadm.Client
	end func()
	// topics caches what the call learnt of topics by name (partitions
	// 0: missing).
	topics map[string]*dlTopic
	hash   kgo.TopicPartitioner
}

// dlTopic is what a call knows of a topic.
type dlTopic struct {
	partitions int
	id         [16]byte
	leaders    map[int32]int32
}

func (d *DeadLetters) begin(ctx context.Context) (*dlOp, error) {
	if d.dlt == "" { // the zero value
		return nil, errZeroDeadLetters
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil, ErrDeadLettersClosed
	}
	if d.active == 0 {
		d.idle = make(chan struct{})
	}
	d.active++
	abortCtx := d.abortCtx
	d.mu.Unlock()
	done := func() {
		d.mu.Lock()
		if d.active--; d.active == 0 {
			close(d.idle)
			d.idle = nil
		}
		d.mu.Unlock()
	}
	if err := ctx.Err(); err != nil {
		done()
		return nil, err
	}
	opts := append(slices.Clone(d.cfg.ClientOptions),
		kgo.SeedBrokers(d.cfg.Brokers...),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		// Copies and markers go to partitions this code picks, in
		// order, one request at a time per broker: a batch refused (too
		// large) fails alone and no later one overtakes it. Without
		// idempotence a retried write may duplicate a copy, which a
		// redrive allows (at least once); it never reorders.
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.DisableIdempotentWrite(),
		kgo.MaxProduceRequestsInflightPerBroker(1),
		kgo.ProducerLinger(0),
		kgo.UnknownTopicRetries(unknownTopicRetries),
	)
	cl, err := newClient(opts)
	if err != nil {
		done()
		return nil, fmt.Errorf("%w: client options: %w", broker.ErrInvalidConfig, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	stopAbort := context.AfterFunc(abortCtx, cancel)
	op := &dlOp{
		d: d, ctx: ctx, cl: cl, adm: kadm.NewClient(cl),
		topics: make(map[string]*dlTopic),
		hash:   keyPartitioner().ForTopic(""),
	}
	op.end = func() {
		stopAbort()
		cancel()
		cl.Close()
		done()
	}
	return op, nil
}

// dlPart is one partition of the dead-letter topic, as a call sees it.
type dlPart struct {
	id int
	// start is where the dead letters not yet handled begin: the group's
	// committed offset, or the log's first offset when that is later;
	// end is the partition's last stable offset when the call began.
	start, end int64
	// committed is the group's committed offset, -1 if none.
	committed int64
	// recorded is the offset of the progress marker this call wrote
	// last, -1 if none.
	recorded int64
}

// dlState is what a call reads before it looks at dead letters.
type dlState struct {
	parts []dlPart // by partition id
	// done holds the dead letters marked done in the done topic, at or
	// past their partition's start.
	done map[int]map[int64]string // the fingerprints of the marked records
	// stale are done markers below their partition's start (covered by
	// the committed offset) or of a partition whose log started over: to
	// be cleaned up (tombstoned).
	stale []string
	// reset holds the partitions whose committed offset lies past their
	// end: their progress is ignored.
	reset map[int]bool
	// other holds the reset partitions whose progress marker names a
	// record that is not the one now before it.
	other map[int]bool
}

// isDone reports whether the dead letter r of partition p is marked done.
// A marker names the record it was written for by its fingerprint: one
// left from a log that started over (the topic recreated) does not match
// the record now at its offset, and is stale.
func (st *dlState) isDone(p int, r *kgo.Record) bool {
	fp, ok := st.done[p][r.Offset]
	if !ok {
		return false
	}
	if fp == fingerprint(r) {
		return true
	}
	delete(st.done[p], r.Offset)
	st.stale = append(st.stale, deadLetterID(p, r.Offset))
	return false
}

// fingerprint identifies a record of the dead-letter topic beyond its
// offset: an FNV-1a 64 hash of its timestamp (milliseconds, big-endian),
// key, a zero byte and value, in hexadecimal, as the kafka-go adapter
// computes it.
func fingerprint(r *kgo.Record) string {
	h := fnv.New64a()
	var ts [8]byte
	binary.BigEndian.PutUint64(ts[:], uint64(r.Timestamp.UnixMilli()))
	h.Write(ts[:])
	h.Write(r.Key)
	h.Write([]byte{0})
	h.Write(r.Value)
	return strconv.FormatUint(h.Sum64(), 16)
}

// topic returns what the call knows of topic, asking the cluster the first
// time (or again when refresh is set).
func (o *dlOp) topic(topic string, refresh bool) (*dlTopic, error) {
	if t, ok := o.topics[topic]; ok && !refresh {
		return t, nil
	}
	md, err := o.adm.Metadata(o.ctx, topic)
	if err != nil {
		return nil, fmt.Errorf("metadata of %s: %w", topic, err)
	}
	t := &dlTopic{leaders: make(map[int32]int32)}
	if td, ok := md.Topics[topic]; ok {
		switch {
		case errors.Is(td.Err, kerr.UnknownTopicOrPartition):
		case td.Err != nil:
			return nil, fmt.Errorf("metadata of %s: %w", topic, td.Err)
		default:
			t.partitions = len(td.Partitions)
			t.id = td.ID
			for p, pd := range td.Partitions {
				t.leaders[p] = pd.Leader
			}
		}
	}
	o.topics[topic] = t
	return t, nil
}

// partitions returns how many partitions topic has (0: it does not exist).
func (o *dlOp) partitions(topic string) (int, error) {
	t, err := o.topic(topic, false)
	if err != nil {
		return 0, err
	}
	return t.partitions, nil
}

// offsets returns the first offset and the last stable offset of
// partitions 0…n-1 of topic.
func (o *dlOp) offsets(topic string, n int) (first, last map[int]int64, err error) {
	starts, err := o.adm.ListStartOffsets(o.ctx, topic)
	if err != nil {
		return nil, nil, fmt.Errorf("list offsets of %s: %w", topic, err)
	}
	// ListCommittedOffsets asks read-committed: the last stable offset.
	ends, err := o.adm.ListCommittedOffsets(o.ctx, topic)
	if err != nil {
		return nil, nil, fmt.Errorf("list offsets of %s: %w", topic, err)
	}
	first, last = make(map[int]int64, n), make(map[int]int64, n)
	for p := range n {
		s, ok1 := starts.Lookup(topic, int32(p))
		e, ok2 := ends.Lookup(topic, int32(p))
		switch {
		case !ok1 || !ok2:
			return nil, nil, fmt.Errorf("list offsets of %s: no answer for partition %d", topic, p)
		case s.Err != nil:
			return nil, nil, fmt.Errorf("list offsets of %s partition %d: %w", topic, p, s.Err)
		case e.Err != nil:
			return nil, nil, fmt.Errorf("list offsets of %s partition %d: %w", topic, p, e.Err)
		}
		first[p], last[p] = s.Offset, e.Offset
	}
	return first, last, nil
}

// committed returns the group's committed offsets on the dead-letter
// topic (-1 or absent where none).
func (o *dlOp) committed() (map[int]int64, error) {
	d := o.d
	out := make(map[int]int64)
	resp, err := o.adm.FetchOffsets(o.ctx, d.group)
	if err != nil {
		if errors.Is(err, kerr.GroupIDNotFound) {
			return out, nil
		}
		return nil, fmt.Errorf("offset fetch of group %s: %w", d.group, err)
	}
	for p, r := range resp[d.dlt] {
		if r.Err != nil && !errors.Is(r.Err, kerr.GroupIDNotFound) && !errors.Is(r.Err, kerr.UnknownTopicOrPartition) {
			return nil, fmt.Errorf("offset fetch of group %s partition %d: %w", d.group, p, r.Err)
		}
		if r.Err == nil {
			out[int(p)] = r.At
		}
	}
	return out, nil
}

// load reads where every partition of the dead-letter topic stands.
//
// The progress (the group's committed offsets and the done topic's
// progress markers) is read before the partitions' end offsets: progress
// is only ever recorded up to an end a call read earlier, and an end
// offset only grows, so a progress past the end read after it means the
// log really started over (the topic was deleted and recreated, or
// truncated), never that a concurrent call recorded progress meanwhile.
// Even so, such a partition is read again before its progress is dropped.
func (o *dlOp) load() (*dlState, error) {
	d := o.d
	n, err := o.partitions(d.dlt)
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, fmt.Errorf("dead-letter topic %s does not exist: %w", d.dlt, kerr.UnknownTopicOrPartition)
	}
	var (
		com         map[int]int64
		marks       map[string][]byte
		first, last map[int]int64
	)
	for try := 0; ; try++ {
		if com, err = o.committed(); err != nil {
			return nil, err
		}
		if marks, err = o.readDone(); err != nil {
			return nil, err
		}
		if first, last, err = o.offsets(d.dlt, n); err != nil {
			return nil, err
		}
		past := false
		hw := progressMarks(marks)
		for p := range n {
			c, ok := com[p]
			if !ok {
				c = -1
			}
			if max(c, hw[p].off) > last[p] {
				past = true
			}
		}
		if !past || try == 1 {
			break
		}
	}
	hw := progressMarks(marks)
	if err := o.checkProgress(hw, first, last); err != nil {
		return nil, err
	}
	st := &dlState{parts: make([]dlPart, n), done: make(map[int]map[int64]string), reset: make(map[int]bool), other: make(map[int]bool)}
	for p := range n {
		c, ok := com[p]
		if !ok || c < 0 {
			c = -1
		}
		floor := max(c, hw[p].off)
		if floor > last[p] || hw[p].other {
			// The progress lies past the end of the log, read after it
			// (twice): the topic was recreated (or truncated). The
			// progress belongs to the old log; the new one starts undone.
			d.log.Warn("franz: dead letters: the recorded progress lies past the end of the partition, or the record before it is not the one it was recorded after (topic recreated?); starting over",
				"partition", p, "committed", c, "progress", hw[p].off, "end", last[p])
			st.reset[p] = true
			if hw[p].other {
				st.other[p] = true
			}
			c, floor = -1, -1
		}
		start := max(first[p], floor)
		end := max(last[p], start)
		st.parts[p] = dlPart{id: p, start: start, end: end, committed: c, recorded: -1}
	}
	o.applyDone(st, marks)
	return st, nil
}

// progressKeyPrefix starts the key of a progress marker in the done topic:
// "progress:<partition>:<offset>" says that every dead letter of the
// partition below offset was redriven or purged. Markers have a key per
// offset, so compaction keeps them all until a call tombstones those below
// a higher one: the progress of a partition, the highest of its markers,
// never moves back, whatever order concurrent calls write in.
const progressKeyPrefix = "progress:"

func progressKey(p int, off int64) string {
	return progressKeyPrefix + deadLetterID(p, off)
}

// progress is the highest progress marker of a partition.
type progress struct {
	off int64
	// fp is the fingerprint of the record before off when the marker
	// was written ("" when not known).
	fp string
	// other is set by checkProgress when the record now before off is
	// not that one: the log started over.
	other bool
}

// progressMarks returns the highest progress marker of each partition.
func progressMarks(marks map[string][]byte) map[int]progress {
	hw := make(map[int]progress)
	for k, v := range marks {
		rest, ok := strings.CutPrefix(k, progressKeyPrefix)
		if !ok || v == nil {
			continue
		}
		if p, off, ok := parseDeadLetterID(rest); ok {
			if cur, ok := hw[p]; !ok || off > cur.off {
				pr := progress{off: off}
				// "<redriven|purged> <time> <fingerprint>"
				if f := strings.Fields(string(v)); len(f) >= 3 {
					pr.fp = f[2]
				}
				hw[p] = pr
			}
		}
	}
	return hw
}

// checkProgress reads, for each partition whose progress marker names the
// record before it, that record, and marks the progress other when it is
// not the same (a topic recreated and refilled past the old progress, which
// offsets alone cannot tell). A record deleted by retention (before first)
// cannot be checked.
func (o *dlOp) checkProgress(hw map[int]progress, first, last map[int]int64) error {
	for p, pr := range hw {
		if pr.fp == "" || pr.off-1 < first[p] || pr.off > last[p] {
			continue
		}
		same := false
		err := o.scan(o.d.dlt, p, pr.off-1, pr.off, func(r *kgo.Record) (bool, error) {
			same = r.Offset == pr.off-1 && fingerprint(r) == pr.fp
			return true, nil
		})
		if err != nil {
			return err
		}
		if !same {
			pr.other = true
			hw[p] = pr
		}
	}
	return nil
}

// readDone reads the done topic: the last value of each key (nil: cleared
// by a tombstone).
func (o *dlOp) readDone() (map[string][]byte, error) {
	d := o.d
	marks := make(map[string][]byte)
	n, err := o.partitions(d.doneTopic)
	if err != nil || n == 0 {
		return marks, err // a done topic not created yet holds nothing
	}
	if err := o.checkDonePolicy(); err != nil {
		return nil, err
	}
	first, last, err := o.offsets(d.doneTopic, n)
	if err != nil {
		return nil, err
	}
	for p := range n {
		err := o.scan(d.doneTopic, p, first[p], last[p], func(r *kgo.Record) (bool, error) {
			marks[string(r.Key)] = r.Value
			return false, nil
		})
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", d.doneTopic, err)
		}
	}
	return marks, nil
}

// applyDone puts the done markers into st.
func (o *dlOp) applyDone(st *dlState, marks map[string][]byte) {
	hw := progressMarks(marks)
	for k, v := range marks {
		if v == nil {
			continue
		}
		if rest, ok := strings.CutPrefix(k, progressKeyPrefix); ok {
			// Progress markers below the highest one, or of a log that
			// started over, are no longer needed.
			if p, off, ok := parseDeadLetterID(rest); ok && (p >= len(st.parts) || st.reset[p] || off < hw[p].off) {
				st.stale = append(st.stale, k)
			}
			continue
		}
		p, off, ok := parseDeadLetterID(k)
		if !ok {
			continue
		}
		if p >= len(st.parts) || off < st.parts[p].start || st.reset[p] {
			st.stale = append(st.stale, k)
			continue
		}
		// "<redriven|purged> <time> <fingerprint>": a marker without a
		// fingerprint was not written by DeadLetters, and does not count.
		fields := strings.Fields(string(v))
		if len(fields) < 3 || (fields[0] != "redriven" && fields[0] != "purged") || fields[2] == "" {
			continue
		}
		if st.done[p] == nil {
			st.done[p] = make(map[int64]string)
		}
		st.done[p][off] = fields[2]
	}
	sort.Strings(st.stale)
}

// scanMaxBytes bounds one fetch response of scan (a record batch larger
// than it still comes whole).
const scanMaxBytes = 1 << 20

// scan reads the records of topic's partition p from offset from up to
// (not including) to, in offset order, read-committed: transaction
// markers and the records of aborted transactions are skipped. visit
// returns true to stop. It sends Fetch requests of its own to the
// partition's leader (no consumer, no group): nothing is consumed.
func (o *dlOp) scan(topic string, p int, from, to int64, visit func(*kgo.Record) (bool, error)) error {
	offset := from
	empty, moved := 0, 0
	for offset < to {
		if err := o.ctx.Err(); err != nil {
			return err
		}
		rp, err := o.fetch(topic, p, offset, moved > 0)
		if err == nil {
			err = kerr.ErrorForCode(rp.ErrorCode)
		}
		if err != nil {
			// A leader that moved, or metadata not yet current: ask
			// again, with fresh metadata.
			if moved < 4 && (kerr.IsRetriable(err) || errors.Is(err, kerr.UnknownTopicID)) {
				moved++
				select {
				case <-o.ctx.Done():
					return o.ctx.Err()
				case <-time.After(time.Duration(50<<moved) * time.Millisecond):
				}
				continue
			}
			return fmt.Errorf("fetch %s partition %d at %d: %w", topic, p, offset, err)
		}
		moved = 0
		fp, next := kgo.ProcessFetchPartition(kgo.ProcessFetchPartitionOpts{
			Offset:         offset,
			IsolationLevel: kgo.ReadCommitted(),
			Topic:          topic,
			Partition:      int32(p),
		}, rp, kgo.DefaultDecompressor(), nil)
		if fp.Err != nil {
			return fmt.Errorf("fetch %s partition %d at %d: %w", topic, p, offset, fp.Err)
		}
		for _, r := range fp.Records {
			if r.Offset < offset {
				continue
			}
			if r.Offset >= to {
				return nil
			}
			offset = r.Offset + 1
			stop, err := visit(r)
			if err != nil || stop {
				return err
			}
		}
		// Control records and aborted transactions move the position
		// without a record to visit.
		if next > offset {
			offset = next
			empty = 0
			continue
		}
		if len(fp.Records) > 0 {
			empty = 0
			continue
		}
		// Nothing at or past offset: the partition ends earlier than it
		// said (truncated), or the response was cut short.
		if rp.HighWatermark <= offset {
			return nil
		}
		if empty++; empty == 3 {
			return fmt.Errorf("fetch %s partition %d at %d: no records returned below the high-water mark %d", topic, p, offset, rp.HighWatermark)
		}
	}
	return nil
}

// fetch sends one Fetch request for topic's partition p at offset to its
// leader.
func (o *dlOp) fetch(topic string, p int, offset int64, refresh bool) (*kmsg.FetchResponseTopicPartition, error) {
	t, err := o.topic(topic, refresh)
	if err != nil {
		return nil, err
	}
	leader, ok := t.leaders[int32(p)]
	if !ok || leader < 0 {
		return nil, kerr.LeaderNotAvailable
	}
	req := kmsg.NewPtrFetchRequest()
	req.ReplicaID = -1
	req.MaxWaitMillis = 10
	req.MinBytes = 1
	req.MaxBytes = 1<<31 - 1
	req.IsolationLevel = 1 // read committed
	req.SessionID = 0
	req.SessionEpoch = -1
	rt := kmsg.NewFetchRequestTopic()
	rt.Topic = topic  // up to v12
	rt.TopicID = t.id // from v13
	rpart := kmsg.NewFetchRequestTopicPartition()
	rpart.Partition = int32(p)
	rpart.CurrentLeaderEpoch = -1
	rpart.FetchOffset = offset
	rpart.LogStartOffset = -1
	rpart.PartitionMaxBytes = scanMaxBytes
	rt.Partitions = append(rt.Partitions, rpart)
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(o.ctx, o.cl.Broker(int(leader)))
	if err != nil {
		return nil, err
	}
	if err := kerr.ErrorForCode(resp.ErrorCode); err != nil {
		return nil, err
	}
	if len(resp.Topics) != 1 || len(resp.Topics[0].Partitions) != 1 {
		return nil, fmt.Errorf("the response does not hold the partition asked for")
	}
	return &resp.Topics[0].Partitions[0], nil
}

// deadLetterID is the ID of the dead letter at offset off of partition p of
// the dead-letter topic: "<partition>:<offset>".
func deadLetterID(p int, off int64) string {
	return strconv.Itoa(p) + ":" + strconv.FormatInt(off, 10)
}

// parseDeadLetterID parses "<partition>:<offset>" (canonical decimal
// numbers only).
func parseDeadLetterID(id string) (int, int64, bool) {
	ps, os, ok := strings.Cut(id, ":")
	if !ok {
		return 0, 0, false
	}
	p, err := strconv.Atoi(ps)
	if err != nil || p < 0 || ps != strconv.Itoa(p) {
		return 0, 0, false
	}
	off, err := strconv.ParseInt(os, 10, 64)
	if err != nil || off < 0 || os != strconv.FormatInt(off, 10) {
		return 0, 0, false
	}
	return p, off, true
}

// cursorPrefix starts a List cursor before its base64 encoding: the
// cursor of partition p, offset off is base64url("k1:<p>:<off>"), without
// padding.
const cursorPrefix = "k1:"

func encodeCursor(p int, off int64) string {
	return base64.RawURLEncoding.EncodeToString([]byte(cursorPrefix + deadLetterID(p, off)))
}

func decodeCursor(c string) (int, int64, error) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err == nil {
		if s, ok := strings.CutPrefix(string(b), cursorPrefix); ok {
			if p, off, ok := parseDeadLetterID(s); ok {
				return p, off, nil
			}
		}
	}
	return 0, 0, fmt.Errorf("%w: franz: dead letters: cursor %.40q is not one List returned", broker.ErrInvalidConfig, c)
}

// deadLetter makes the DeadLetter of record r of partition p. The body is
// whole.
func (d *DeadLetters) deadLetter(p int, r *kgo.Record) broker.DeadLetter {
	h := headerMap(r.Headers)
	dl := broker.DeadLetter{
		ID: deadLetterID(p, r.Offset),
		Message: broker.Message{
			ID:     d.dlt + "/" + strconv.Itoa(p) + "/" + strconv.FormatInt(r.Offset, 10),
			Topic:  d.dlt,
			Key:    r.Key,
			Body:   r.Value,
			Header: h,
			Time:   r.Timestamp,
		},
		BodySize:  len(r.Value),
		Partition: -1,
		Offset:    -1,
		Redriven:  broker.Redriven(h),
	}
	dl.Reason, dl.HasReason = broker.ParseReason(h)
	if v, err := strconv.Atoi(h[HeaderPartition]); err == nil && v >= 0 {
		dl.Partition = v
	}
	if v, err := strconv.ParseInt(h[HeaderOffset], 10, 64); err == nil && v >= 0 {
		dl.Offset = v
	}
	return dl
}

// headerMap returns record headers as a map (nil when none); a repeated
// key keeps its last value.
func headerMap(hs []kgo.RecordHeader) map[string]string {
	if len(hs) == 0 {
		return nil
	}
	out := make(map[string]string, len(hs))
	for _, h := range hs {
		out[h.Key] = string(h.Value)
	}
	return out
}

// idBounds reads the ids of a filter: per partition, the highest offset
// named (scans stop there). ok is false when no id names a partition of
// st: nothing can match.
func idBounds(ids []string, st *dlState) (map[int]int64, bool) {
	if len(ids) == 0 {
		return nil, true
	}
	b := make(map[int]int64)
	for _, id := range ids {
		p, off, ok := parseDeadLetterID(id)
		if !ok || p >= len(st.parts) {
			continue
		}
		if cur, ok := b[p]; !ok || off > cur {
			b[p] = off
		}
	}
	return b, len(b) > 0
}

// scanRange is the range of partition pt to look at under the id bounds
// b (nil: no ids given).
func scanRange(pt *dlPart, b map[int]int64) (int64, int64, bool) {
	to := pt.end
	if b != nil {
		hi, ok := b[pt.id]
		if !ok {
			return 0, 0, false
		}
		to = min(to, hi+1)
	}
	return pt.start, to, pt.start < to
}

// fail wraps the error of a call; when the call's ctx ended, the error
// wraps ctx's too.
func (d *DeadLetters) fail(ctx context.Context, what string, err error) error {
	if err == nil {
		return nil
	}
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		err = fmt.Errorf("%w: %w", cerr, err)
	}
	return fmt.Errorf("franz: dead letters of %s: %s: %w", d.dlt, what, err)
}

// List implements broker.DeadLetters: the dead letters not yet redriven or
// purged, by partition and then offset, read without consuming anything.
// The cursor is opaque (it encodes the position to go on from, as the
// kafka-go adapter's does); a malformed one is refused with an error
// wrapping broker.ErrInvalidConfig, and one naming a partition the topic
// does not have with one wrapping broker.ErrDeadLetterNotFound.
func (d *DeadLetters) List(ctx context.Context, q broker.DeadLetterQuery) (broker.DeadLetterPage, error) {
	page := broker.DeadLetterPage{Items: []broker.DeadLetter{}}
	if err := q.Resolve(); err != nil {
		return page, d.fail(ctx, "list", err)
	}
	cp, co := 0, int64(-1)
	if q.Cursor != "" {
		var err error
		if cp, co, err = decodeCursor(q.Cursor); err != nil {
			return page, d.fail(ctx, "list", err)
		}
	}
	op, err := d.begin(ctx)
	if err != nil {
		return page, d.fail(ctx, "list", err)
	}
	defer op.end()
	st, err := op.load()
	if err != nil {
		return page, d.fail(ctx, "list", err)
	}
	if cp >= len(st.parts) {
		return page, d.fail(ctx, "list", fmt.Errorf("%w: the cursor names partition %d; the topic has %d", broker.ErrDeadLetterNotFound, cp, len(st.parts)))
	}
	b, some := idBounds(q.IDs, st)
	if !some {
		return page, nil
	}
	match := q.Matcher()
	for i := cp; i < len(st.parts) && page.Next == ""; i++ {
		pt := &st.parts[i]
		from, to, ok := scanRange(pt, b)
		if !ok {
			continue
		}
		if i == cp && co > from {
			from = co
		}
		err := op.scan(d.dlt, pt.id, from, to, func(r *kgo.Record) (bool, error) {
			if st.isDone(pt.id, r) {
				return false, nil
			}
			dl := d.deadLetter(pt.id, r)
			if !match(&dl) {
				return false, nil
			}
			if len(page.Items) == q.Limit {
				page.Next = encodeCursor(pt.id, r.Offset)
				return true, nil
			}
			broker.CutBody(&dl, q.BodyLimit)
			page.Items = append(page.Items, dl)
			return false, nil
		})
		if err != nil {
			return broker.DeadLetterPage{Items: []broker.DeadLetter{}}, d.fail(ctx, "list", err)
		}
	}
	return page, nil
}

// Count implements broker.DeadLetters: how many dead letters not yet
// redriven or purged match f. It reads every one of them.
func (d *DeadLetters) Count(ctx context.Context, f broker.DeadLetterFilter) (int, error) {
	op, err := d.begin(ctx)
	if err != nil {
		return 0, d.fail(ctx, "count", err)
	}
	defer op.end()
	st, err := op.load()
	if err != nil {
		return 0, d.fail(ctx, "count", err)
	}
	b, some := idBounds(f.IDs, st)
	if !some {
		return 0, nil
	}
	match := f.Matcher()
	n := 0
	for i := range st.parts {
		pt := &st.parts[i]
		from, to, ok := scanRange(pt, b)
		if !ok {
			continue
		}
		err := op.scan(d.dlt, pt.id, from, to, func(r *kgo.Record) (bool, error) {
			if st.isDone(pt.id, r) {
				return false, nil
			}
			if f.IsZero() {
				n++
				return false, nil
			}
			dl := d.deadLetter(pt.id, r)
			if match(&dl) {
				n++
			}
			return false, nil
		})
		if err != nil {
			return 0, d.fail(ctx, "count", err)
		}
	}
	return n, nil
}

// Redrive implements broker.DeadLetters. For each selected dead letter, in
// order, it writes a copy to the topic these dead letters belong to
// (DeadLetterConfig.Topic), or to opts.Destination, with its key, body and
// headers (broker.RedriveHeader, without HeaderTopic, HeaderPartition and
// HeaderOffset), to the partition it was consumed from (HeaderPartition)
// when it goes back to that topic and the partition exists, else to the
// partition its key hashes to (where Publisher, and the kafka-go adapter,
// put that key). The copies of a batch (up
// to 256 dead letters) are written with acks=all; only once the brokers
// confirmed them are the dead letters recorded as done. A crash in between
// leaves them dead letters: the next Redrive sends them again (a
// duplicate, never a loss).
//
// Headers do not choose where a copy goes: without opts.Destination, a
// dead letter whose reason names another topic (HeaderSource, else
// HeaderTopic), or none, is skipped with an error wrapping
// broker.ErrNoSource, as is one whose topic does not exist (it is not
// created); one redriven opts.Limit() times already with one wrapping
// broker.ErrRedriveLimit; one whose copy the topic refuses as too large
// with one wrapping kerr.MessageTooLarge. A Destination that does not
// exist fails the call (wrapping broker.ErrNoSource), and one that is the
// dead-letter topic or a done topic (wrapping broker.ErrInvalidConfig),
// before anything is done. Ids that are malformed, name no partition, lie
// past the end of their partition, hold no dead letter or were redriven or
// purged already are Missing.
func (d *DeadLetters) Redrive(ctx context.Context, sel broker.DeadLetterSelection, opts broker.RedriveOptions) (broker.DeadLetterResult, error) {
	return d.handle(ctx, sel, opts, false, opts.DryRun)
}

// Purge implements broker.DeadLetters. Kafka cannot delete single records:
// a purged dead letter stays in the dead-letter topic until its retention
// deletes it, but is recorded as done, so List, Count and Redrive skip it.
// Ids are handled as by Redrive.
func (d *DeadLetters) Purge(ctx context.Context, sel broker.DeadLetterSelection, dryRun bool) (broker.DeadLetterResult, error) {
	return d.handle(ctx, sel, broker.RedriveOptions{}, true, dryRun)
}

// redriveBatch is how many dead letters Redrive and Purge handle between
// two records of their progress.
const redriveBatch = 256

func (d *DeadLetters) handle(ctx context.Context, sel broker.DeadLetterSelection, opts broker.RedriveOptions, purge, dryRun bool) (broker.DeadLetterResult, error) {
	what := "redrive"
	if purge {
		what = "purge"
	}
	res := broker.DeadLetterResult{Done: []string{}, DryRun: dryRun}
	if err := sel.Check(); err != nil {
		return res, d.fail(ctx, what, err)
	}
	if opts.Destination != "" && !purge {
		if err := checkTopicName(opts.Destination); err != nil {
			return res, d.fail(ctx, what, fmt.Errorf("%w: destination: %w", broker.ErrInvalidConfig, err))
		}
		if err := d.ownTopic(opts.Destination); err != nil {
			return res, d.fail(ctx, what, err)
		}
	}
	op, err := d.begin(ctx)
	if err != nil {
		return res, d.fail(ctx, what, err)
	}
	defer op.end()
	st, err := op.load()
	if err != nil {
		return res, d.fail(ctx, what, err)
	}
	if opts.Destination != "" && !purge {
		n, err := op.partitions(opts.Destination)
		if err != nil {
			return res, d.fail(ctx, what, err)
		}
		if n == 0 {
			return res, d.fail(ctx, what, fmt.Errorf("%w: destination topic %s does not exist (it is not created)", broker.ErrNoSource, opts.Destination))
		}
	}
	// The ids asked for, by partition and offset; those never met are
	// Missing.
	var wanted map[int]map[int64]string
	if len(sel.IDs) > 0 {
		wanted = make(map[int]map[int64]string)
		seen := make(map[string]bool)
		for _, id := range sel.IDs {
			if seen[id] {
				continue
			}
			seen[id] = true
			p, off, ok := parseDeadLetterID(id)
			if !ok || p >= len(st.parts) || off < st.parts[p].start || off >= st.parts[p].end {
				res.Missing = append(res.Missing, id)
				continue
			}
			if wanted[p] == nil {
				wanted[p] = make(map[int64]string)
			}
			wanted[p][off] = id
		}
		if len(wanted) == 0 {
			return res, res.Err()
		}
	}
	if !dryRun {
		// A partition whose log started over gets its progress reset
		// first, so that the done markers written below are not taken for
		// the old log's (see load).
		if err := op.resetProgress(st); err != nil {
			return res, d.fail(ctx, what, err)
		}
	}
	filter := sel.DeadLetterFilter
	filter.IDs = nil // matched through wanted
	match := filter.Matcher()
	w := &dlWork{op: op, st: st, res: &res, purge: purge, dryRun: dryRun, now: d.now(), written: make(map[string]bool)}
	selected := 0
	full := false
	for i := range st.parts {
		if full {
			break
		}
		pt := &st.parts[i]
		to := pt.end
		if wanted != nil {
			ws := wanted[pt.id]
			if len(ws) == 0 {
				continue
			}
			hi := int64(-1)
			for off := range ws {
				hi = max(hi, off)
			}
			to = min(to, hi+1)
		}
		w.begin(pt)
		err := op.scan(d.dlt, pt.id, pt.start, to, func(r *kgo.Record) (bool, error) {
			if st.isDone(pt.id, r) {
				// Done already: an id asked for stays in wanted, and is
				// Missing.
				w.alreadyDone(r)
				return false, nil
			}
			if wanted != nil {
				if _, ok := wanted[pt.id][r.Offset]; !ok {
					w.keep()
					return false, nil
				}
				delete(wanted[pt.id], r.Offset)
			}
			dl := d.deadLetter(pt.id, r)
			if !match(&dl) {
				w.keep()
				return false, nil
			}
			if sel.Max > 0 && selected == sel.Max {
				full = true
				return true, nil
			}
			selected++
			if purge {
				return false, w.add(r, dl.ID, nil)
			}
			if lim := opts.Limit(); lim >= 0 && dl.Redriven >= lim {
				res.Skipped = append(res.Skipped, broker.NewSkipped(dl.ID,
					fmt.Errorf("%w: redriven %d times (limit %d)", broker.ErrRedriveLimit, dl.Redriven, lim)))
				w.keep()
				return false, nil
			}
			cp, err := op.redriveCopy(&dl, opts.Destination, w.now)
			if err != nil {
				return false, err
			}
			if cp.skip != nil {
				res.Skipped = append(res.Skipped, broker.NewSkipped(dl.ID, cp.skip))
				w.keep()
				return false, nil
			}
			return false, w.add(r, dl.ID, cp)
		})
		if err == nil {
			err = w.flush()
		}
		if err != nil {
			return res, d.fail(ctx, what, err)
		}
		if wanted != nil && !full {
			var left []int64
			for off := range wanted[pt.id] {
				left = append(left, off)
			}
			slices.Sort(left)
			for _, off := range left {
				res.Missing = append(res.Missing, wanted[pt.id][off]) // a gap: no dead letter there
			}
		}
	}
	if err := w.cleanStale(); err != nil {
		d.log.Warn("franz: dead letters: cleaning up done markers failed; they are cleaned up by a later call", "error", err)
	}
	return res, res.Err()
}

// dlCopy is the redriven copy of a dead letter, or why it is skipped.
type dlCopy struct {
	rec  *kgo.Record // Topic and Partition set
	skip error
}

// ownTopic returns an error wrapping broker.ErrInvalidConfig when topic is
// the dead-letter topic or a done topic (this one's, or another's: a name
// ending in DeadLetterDoneSuffix), which a redrive must not write to: a
// copy in a done topic reads as a done marker, and hides a dead letter.
func (d *DeadLetters) ownTopic(topic string) error {
	switch {
	case topic == d.dlt:
		return fmt.Errorf("%w: destination %s is the dead-letter topic itself", broker.ErrInvalidConfig, topic)
	case topic == d.doneTopic || strings.HasSuffix(topic, DeadLetterDoneSuffix):
		return fmt.Errorf("%w: destination %s is a dead-letter done topic (the adapter's own bookkeeping)", broker.ErrInvalidConfig, topic)
	}
	return nil
}

// redriveCopy makes the copy of dl to send back: to dest when given, else
// to the topic these dead letters belong to (cfg.Topic). The headers do not
// choose the topic: a dead letter whose headers name another source, or
// none, is skipped (ErrNoSource) unless dest is given.
func (o *dlOp) redriveCopy(dl *broker.DeadLetter, dest string, now time.Time) (*dlCopy, error) {
	h := dl.Message.Header
	own := o.d.cfg.Topic
	origin := h[HeaderTopic]
	named := dl.Reason.Source
	if named == "" {
		named = origin
	}
	target := dest
	if target == "" {
		switch named {
		case own:
			target = own
		case "":
			return &dlCopy{skip: fmt.Errorf("%w: no %s or %s header, and no destination given", broker.ErrNoSource, HeaderTopic, broker.HeaderSource)}, nil
		default:
			return &dlCopy{skip: fmt.Errorf("%w: it came from %.60q, not from %s (whose dead letters these are); give a destination to send it elsewhere", broker.ErrNoSource, named, own)}, nil
		}
	}
	n, err := o.partitions(target)
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return &dlCopy{skip: fmt.Errorf("%w: topic %s does not exist (it is not created)", broker.ErrNoSource, target)}, nil
	}
	ch := broker.RedriveHeader(h, dl.ID, now)
	delete(ch, HeaderTopic)
	delete(ch, HeaderPartition)
	delete(ch, HeaderOffset)
	rec := &kgo.Record{Topic: target, Timestamp: now, Key: dl.Message.Key, Value: dl.Message.Body, Headers: recordHeaders(ch)}
	if target == origin && dl.Partition >= 0 && dl.Partition < n {
		rec.Partition = int32(dl.Partition)
	} else {
		rec.Partition = int32(o.hash.Partition(rec, n))
	}
	if rec.Value == nil {
		rec.Value = []byte{} // an empty body, not a tombstone
	}
	return &dlCopy{rec: rec}, nil
}

// dlWork is the progress of a Redrive or Purge on one partition.
type dlWork struct {
	op     *dlOp
	st     *dlState
	res    *broker.DeadLetterResult
	purge  bool
	dryRun bool
	now    time.Time

	pt *dlPart
	// contiguous is true while every dead letter from pt.start up to the
	// one at hand is done (or being done in this batch): prefix is then
	// the offset the group may commit once the batch is recorded.
	contiguous bool
	prefix     int64
	prefixFP   string // the fingerprint of the record before prefix, if known
	batch      []dlItem
	// written are the keys this call wrote to the done topic: never
	// tombstoned as stale by it.
	written map[string]bool
	// covered are done markers of this partition that the next commit
	// covers: they are tombstoned after it.
	covered []string
}

type dlItem struct {
	off      int64
	id       string
	fp       string  // the record's fingerprint, for its done marker
	cp       *dlCopy // nil for a purge
	inPrefix bool
}

func (w *dlWork) begin(pt *dlPart) {
	w.pt, w.contiguous, w.prefix, w.prefixFP, w.batch, w.covered = pt, true, pt.start, "", nil, nil
}

func (w *dlWork) alreadyDone(r *kgo.Record) {
	if w.contiguous {
		w.prefix = r.Offset + 1
		w.prefixFP = fingerprint(r)
		w.covered = append(w.covered, deadLetterID(w.pt.id, r.Offset))
	}
}

func (w *dlWork) keep() { w.contiguous = false }

func (w *dlWork) add(r *kgo.Record, id string, cp *dlCopy) error {
	fp := fingerprint(r)
	w.batch = append(w.batch, dlItem{off: r.Offset, id: id, fp: fp, cp: cp, inPrefix: w.contiguous})
	if w.contiguous {
		w.prefix = r.Offset + 1
		w.prefixFP = fp
	}
	if len(w.batch) >= redriveBatch {
		return w.flush()
	}
	return nil
}

// flush sends the batch's copies, waits for their acks, then records the
// batch as done: done markers for the dead letters past the contiguous
// prefix and a progress marker of the prefix, in one write to the done
// topic, then the group's commit of the prefix. A copy the destination
// refuses as too large, or whose topic was deleted, is skipped: its dead
// letter stays, and the prefix stops before it.
func (w *dlWork) flush() error {
	batch := w.batch
	w.batch = nil
	if w.dryRun {
		for _, it := range batch {
			w.res.Done = append(w.res.Done, it.id)
		}
		return nil
	}
	o := w.op
	refused, err := o.sendCopies(batch)
	if err != nil {
		return err
	}
	if len(refused) > 0 {
		// The prefix ends at the first dead letter left; those after it
		// get done markers instead.
		cut := false
		for i := range batch {
			it := &batch[i]
			if _, skip := refused[i]; skip && it.inPrefix && !cut {
				cut = true
				w.prefix = it.off
				w.prefixFP = ""
				if i > 0 && batch[i-1].off == it.off-1 {
					w.prefixFP = batch[i-1].fp
				}
				w.contiguous = false
			}
			if cut {
				it.inPrefix = false
			}
		}
		if cut {
			kept := w.covered[:0]
			for _, id := range w.covered {
				if _, off, ok := parseDeadLetterID(id); ok && off < w.prefix {
					kept = append(kept, id)
				}
			}
			w.covered = kept
		}
	}
	var marks []*kgo.Record
	value := "redriven " + w.now.UTC().Format(time.RFC3339Nano)
	if w.purge {
		value = "purged " + w.now.UTC().Format(time.RFC3339Nano)
	}
	for i, it := range batch {
		if _, skip := refused[i]; skip {
			continue
		}
		if !it.inPrefix {
			marks = append(marks, &kgo.Record{Key: []byte(it.id), Value: []byte(value + " " + it.fp)})
			w.written[it.id] = true
		}
	}
	advance := w.prefix > w.pt.start && w.prefix > w.pt.committed && w.prefix > w.pt.recorded
	if advance {
		k := progressKey(w.pt.id, w.prefix)
		v := value
		if w.prefixFP != "" {
			v += " " + w.prefixFP
		}
		marks = append(marks, &kgo.Record{Key: []byte(k), Value: []byte(v)})
		w.written[k] = true
	}
	if len(marks) > 0 {
		if err := o.writeDone(marks); err != nil {
			var unknown []string
			for i, it := range batch {
				if _, skip := refused[i]; !skip {
					unknown = append(unknown, it.id)
				}
			}
			if w.purge {
				return fmt.Errorf("record the purge of %s: the outcome is unknown (they may have been purged; list again): %w", strings.Join(unknown, ", "), err)
			}
			return fmt.Errorf("record the redrive of %s: the outcome is unknown (their copies were sent; they may have been recorded as redriven, else the next redrive sends them again; list again): %w", strings.Join(unknown, ", "), err)
		}
	}
	if advance {
		if w.pt.recorded >= 0 {
			// The previous progress marker of this call is below the new one.
			prev := progressKey(w.pt.id, w.pt.recorded)
			delete(w.written, prev)
			w.st.stale = append(w.st.stale, prev)
		}
		w.pt.recorded = w.prefix
		w.st.stale = append(w.st.stale, w.covered...)
		w.covered = nil
		// The group's committed offset follows the progress markers, for
		// the tools that show a group's lag; the markers decide.
		if err := o.commit(w.pt.id, w.prefix, false); err != nil {
			o.d.log.Warn("franz: dead letters: committing the progress to the group failed; the done topic holds it", "partition", w.pt.id, "offset", w.prefix, "error", err)
		} else {
			w.pt.committed = max(w.pt.committed, w.prefix)
		}
	}
	for i, it := range batch {
		if err, skip := refused[i]; skip {
			w.res.Skipped = append(w.res.Skipped, broker.NewSkipped(it.id, err))
			continue
		}
		w.res.Done = append(w.res.Done, it.id)
	}
	return nil
}

// sendCopies writes the copies of batch, in the batch's order per topic
// and partition, with acks=all. It returns the copies (by index in batch)
// that their topic refused as larger than its max.message.bytes, or whose
// topic was deleted meanwhile, with why.
func (o *dlOp) sendCopies(batch []dlItem) (map[int]error, error) {
	var idx []int
	var recs []*kgo.Record
	for i, it := range batch {
		if it.cp != nil {
			idx = append(idx, i)
			recs = append(recs, it.cp.rec)
		}
	}
	if len(recs) == 0 {
		return nil, nil
	}
	failed, err := o.produce(recs)
	if err != nil {
		return nil, err
	}
	var refused map[int]error
	for j, e := range failed {
		if refused == nil {
			refused = make(map[int]error)
		}
		refused[idx[j]] = e
	}
	return refused, nil
}

// produceChunk bounds the records of one write (their keys, values and
// headers), well under the 1 MB a topic's max.message.bytes allows by
// default; a record larger than it goes alone.
const produceChunk = 512 << 10

// produce writes recs (Topic and Partition set) in order, in chunks of up
// to produceChunk bytes, each acknowledged by all in-sync replicas before
// the next is sent. It returns the records (by index) that the topic
// refused as too large alone, or whose topic does not exist (any more),
// with why; any other failure is the error, and the records of its chunk
// and after it may or may not have been written.
func (o *dlOp) produce(recs []*kgo.Record) (map[int]error, error) {
	var refused map[int]error
	refuse := func(i int, err error) {
		if refused == nil {
			refused = make(map[int]error)
		}
		refused[i] = err
	}
	for start := 0; start < len(recs); {
		n, size := 0, 0
		for start+n < len(recs) {
			sz := recordSize(recs[start+n])
			if n > 0 && size+sz > produceChunk {
				break
			}
			size += sz
			n++
		}
		chunk := recs[start : start+n]
		results := o.cl.ProduceSync(o.ctx, chunk...)
		var tooLarge []int
		for j, r := range results {
			switch err := r.Err; {
			case err == nil:
			case errors.Is(err, kerr.MessageTooLarge) || errors.Is(err, kerr.RecordListTooLarge):
				tooLarge = append(tooLarge, start+j)
			case errors.Is(err, kerr.UnknownTopicOrPartition):
				// The topic was deleted since the batch began: its dead
				// letters stay (some copies may have gone before it was).
				o.topics[r.Record.Topic] = &dlTopic{}
				refuse(start+j, fmt.Errorf("%w: topic %s does not exist any more: %w", broker.ErrNoSource, r.Record.Topic, err))
			default:
				if cerr := o.ctx.Err(); cerr != nil {
					return nil, cerr
				}
				return nil, fmt.Errorf("write %d record(s) to %s partition %d: %w", len(chunk), r.Record.Topic, r.Record.Partition, err)
			}
		}
		// A batch refused as too large fails whole: write its records
		// again one by one, so that only those too large alone stay.
		for _, i := range tooLarge {
			err := o.cl.ProduceSync(o.ctx, recs[i]).FirstErr()
			switch {
			case err == nil:
			case errors.Is(err, kerr.MessageTooLarge) || errors.Is(err, kerr.RecordListTooLarge):
				refuse(i, fmt.Errorf("the copy (%d bytes) is larger than topic %s takes (max.message.bytes): %w", recordSize(recs[i]), recs[i].Topic, err))
			default:
				return nil, fmt.Errorf("write a record to %s partition %d: %w", recs[i].Topic, recs[i].Partition, err)
			}
		}
		start += n
	}
	return refused, nil
}

func recordSize(r *kgo.Record) int {
	n := 64 // per-record overhead, roughly
	n += len(r.Key) + len(r.Value)
	for _, h := range r.Headers {
		n += len(h.Key) + len(h.Value) + 8
	}
	return n
}

// writeDone writes done markers (or tombstones: a nil Value) to partition
// 0 of the done topic, creating the topic (compacted, one partition) the
// first time.
func (o *dlOp) writeDone(recs []*kgo.Record) error {
	d := o.d
	n, err := o.partitions(d.doneTopic)
	if err != nil {
		return err
	}
	if n == 0 {
		compact := "compact"
		resp, err := o.adm.CreateTopic(o.ctx, 1, -1, map[string]*string{"cleanup.policy": &compact}, d.doneTopic)
		if err == nil {
			err = resp.Err
		}
		if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
			return fmt.Errorf("create %s: %w", d.doneTopic, err)
		}
		if err == nil {
			d.mu.Lock()
			d.policyOK = true // created here, compacted
			d.mu.Unlock()
		}
		if _, err := o.topic(d.doneTopic, true); err != nil {
			return err
		}
	}
	if err := o.checkDonePolicy(); err != nil {
		return err
	}
	for _, r := range recs {
		r.Topic, r.Partition = d.doneTopic, 0
	}
	// A topic just created may take a moment to be writable: kgo retries
	// until the metadata shows it (UnknownTopicRetries), then fails.
	for try := 0; ; try++ {
		refused, err := o.produce(recs)
		if err == nil && len(refused) == 0 {
			return nil
		}
		if err == nil {
			// Markers are small: a refusal is the topic missing (again).
			for _, e := range refused {
				err = e
				break
			}
			if try < 20 {
				// Write only what was refused again.
				var again []*kgo.Record
				for i := range recs {
					if _, ok := refused[i]; ok {
						again = append(again, recs[i])
					}
				}
				recs = again
				o.topics[d.doneTopic] = &dlTopic{partitions: 1}
				select {
				case <-o.ctx.Done():
					return o.ctx.Err()
				case <-time.After(50 * time.Millisecond):
				}
				continue
			}
		}
		return fmt.Errorf("write to %s: %w", d.doneTopic, err)
	}
}

// checkDonePolicy refuses a done topic whose cleanup.policy is not
// "compact" alone (someone else created it, with deletion by retention):
// its markers would expire and the dead letters they mark come back. It
// asks the broker once per DeadLetters; when the broker does not let it
// read the topic's config, it logs a warning and goes on.
func (o *dlOp) checkDonePolicy() error {
	d := o.d
	d.mu.Lock()
	ok := d.policyOK
	d.mu.Unlock()
	if ok {
		return nil
	}
	rcs, err := o.adm.DescribeTopicConfigs(o.ctx, d.doneTopic)
	var policy string
	found := false
	if err == nil {
		var rc kadm.ResourceConfig
		if rc, err = rcs.On(d.doneTopic, nil); err == nil {
			err = rc.Err
			for _, c := range rc.Configs {
				if c.Key == "cleanup.policy" {
					policy, found = c.MaybeValue(), true
				}
			}
		}
	}
	if err != nil {
		var ae *kadm.AuthError
		if errors.As(err, &ae) || errors.Is(err, kerr.TopicAuthorizationFailed) || errors.Is(err, kerr.ClusterAuthorizationFailed) {
			d.log.Warn("franz: dead letters: not allowed to read the done topic's cleanup.policy; going on as if it were compact (if it deletes by retention, handled dead letters come back when their markers expire)", "done_topic", d.doneTopic, "error", err)
			d.mu.Lock()
			d.policyOK = true
			d.mu.Unlock()
			return nil
		}
		return fmt.Errorf("describe the config of %s: %w", d.doneTopic, err)
	}
	if !found || strings.TrimSpace(policy) != "compact" {
		return fmt.Errorf("%w: franz: dead letters: done topic %s has cleanup.policy %q; it must be \"compact\" (without \"delete\"), or its done markers expire and the dead letters they mark come back: alter its config, or delete it and let the adapter create it", broker.ErrInvalidConfig, d.doneTopic, policy)
	}
	d.mu.Lock()
	d.policyOK = true
	d.mu.Unlock()
	return nil
}

// commit moves the group's committed offset of partition p forward to
// off, never back as far as this call sees (a concurrent call may have
// committed further), unless reset. It commits as a simple consumer
// (generation -1, no member): the group never has members. Two calls may
// still race (check, then commit): the group's offset is kept for tools
// that show a group's lag, and the progress markers of the done topic,
// which cannot move back, decide where the dead letters start (see load).
func (o *dlOp) commit(p int, off int64, reset bool) error {
	d := o.d
	if !reset {
		cur, err := o.committed()
		if err != nil {
			return err
		}
		if c, ok := cur[p]; ok && c >= off {
			return nil
		}
	}
	var os kadm.Offsets
	os.Add(kadm.Offset{Topic: d.dlt, Partition: int32(p), At: off, LeaderEpoch: -1})
	resp, err := o.adm.CommitOffsets(o.ctx, d.group, os)
	if err != nil {
		return err
	}
	return resp.Error()
}

// resetProgress drops the progress of the partitions whose log started
// over (st.reset), before this call records any: it tombstones their
// progress and done markers and commits the group back to the log start,
// once more checking, just before, that the group's offset is still past
// the end.
func (o *dlOp) resetProgress(st *dlState) error {
	if len(st.reset) == 0 {
		return nil
	}
	d := o.d
	var tomb []*kgo.Record
	var keep []string
	for _, k := range st.stale {
		id := strings.TrimPrefix(k, progressKeyPrefix)
		if p, _, ok := parseDeadLetterID(id); ok && st.reset[p] {
			tomb = append(tomb, &kgo.Record{Topic: d.doneTopic, Key: []byte(k)})
			continue
		}
		keep = append(keep, k)
	}
	if len(tomb) > 0 {
		if err := o.writeDone(tomb); err != nil {
			return fmt.Errorf("reset the progress: %w", err)
		}
	}
	st.stale = keep
	n := len(st.parts)
	com, err := o.committed()
	if err != nil {
		return err
	}
	_, last, err := o.offsets(d.dlt, n)
	if err != nil {
		return err
	}
	for p := range st.reset {
		if c, ok := com[p]; ok && (c > last[p] || st.other[p] && c > st.parts[p].start) {
			if err := o.commit(p, st.parts[p].start, true); err != nil {
				return fmt.Errorf("reset the progress of partition %d: %w", p, err)
			}
		}
		delete(st.reset, p)
	}
	return nil
}

// cleanStale tombstones done markers that committed offsets cover, so that
// the compacted done topic stays small.
func (w *dlWork) cleanStale() error {
	if w.dryRun || len(w.st.stale) == 0 {
		return nil
	}
	recs := make([]*kgo.Record, 0, len(w.st.stale))
	seen := make(map[string]bool)
	for _, k := range w.st.stale {
		if w.written[k] || seen[k] {
			continue
		}
		seen[k] = true
		recs = append(recs, &kgo.Record{Key: []byte(k)}) // a nil Value: a tombstone
	}
	w.st.stale = nil
	if len(recs) == 0 {
		return nil
	}
	return w.op.writeDone(recs)
}
