package kafka

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	fetchapi "github.com/segmentio/kafka-go/protocol/fetch"

	"github.com/queuekit/queuekit/broker"
)

// DeadLetterConfig configures DeadLetters. Brokers and Topic are required.
type DeadLetterConfig struct {
	// Brokers are the bootstrap broker addresses, host:port.
	Brokers []string
	// Dialer supplies TLS, SASL, client ID and dial timeout. Default: plain
	// connections with a 10 s dial timeout.
	Dialer *kafkago.Dialer
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
// dead-letter topic (see the package documentation, "Dead letters").
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
// broker.DeadLetters; see the package documentation ("Dead letters") for
// how. It is safe for concurrent use. Each call opens connections of its
// own and closes them before it returns, so a DeadLetters holds nothing
// between calls; Close refuses new calls and ends those in progress. Make
// one with NewDeadLetters, or take a Source's with Source.DeadLetters.
type DeadLetters struct {
	cfg       DeadLetterConfig
	dlt       string
	group     string
	doneTopic string
	log       *slog.Logger
	addr      net.Addr

	mu     sync.Mutex
	closed bool
	active int // calls in progress
	calls  sync.WaitGroup

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

// NewDeadLetters returns the DeadLetters of cfg.Topic. It returns an error
// wrapping broker.ErrInvalidConfig when cfg is invalid. It does not
// connect: each call does.
func NewDeadLetters(cfg DeadLetterConfig) (*DeadLetters, error) {
	cfg.Brokers = append([]string(nil), cfg.Brokers...)
	if err := validateBrokers(cfg.Brokers); err != nil {
		return nil, err
	}
	if cfg.Topic == "" {
		return nil, invalid("dead letters: empty Topic")
	}
	if err := invalidTopic("dead letters: Topic", cfg.Topic); err != nil {
		return nil, err
	}
	if cfg.DeadLetterTopic == "" {
		cfg.DeadLetterTopic = cfg.Topic + ".dlt"
	}
	if err := invalidTopic("dead letters: DeadLetterTopic (default: Topic + \".dlt\")", cfg.DeadLetterTopic); err != nil {
		return nil, err
	}
	if cfg.DeadLetterTopic == cfg.Topic {
		return nil, invalid("dead letters: DeadLetterTopic %q is the consumed topic", cfg.Topic)
	}
	done := cfg.DeadLetterTopic + DeadLetterDoneSuffix
	if err := validTopicName(done); err != nil {
		return nil, invalid("dead letters: DeadLetterTopic is too long for its done topic (DeadLetterTopic + %q): %v", DeadLetterDoneSuffix, err)
	}
	if cfg.Dialer == nil {
		cfg.Dialer = &kafkago.Dialer{Timeout: 10 * time.Second, DualStack: true}
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
		addr:      kafkago.TCP(cfg.Brokers...),
		abortCtx:  abortCtx,
		abortFn:   abortFn,
		now:       time.Now,
	}, nil
}

// DeadLetters implements broker.DeadLetterSource: the dead letters of the
// Source's topic, in Config.DeadLetterTopic, reached with the Source's
// brokers and Dialer. It works before the first Receive and after Close
// too: it shares no connection with the Source. Each call returns a new
// DeadLetters value; none needs closing (Close only ends the calls in
// progress).
func (s *Source) DeadLetters() broker.DeadLetters {
	d, err := NewDeadLetters(DeadLetterConfig{
		Brokers:         s.cfg.Brokers,
		Dialer:          s.cfg.Dialer,
		Topic:           s.cfg.Topic,
		DeadLetterTopic: s.cfg.DeadLetterTopic,
		Logger:          s.cfg.Logger,
	})
	if err != nil {
		// NewSource validated the same fields; this cannot happen, but a
		// nil would make the caller panic.
		return failedDeadLetters{err}
	}
	return d
}

// failedDeadLetters answers every call with err.
type failedDeadLetters struct{ err error }

func (f failedDeadLetters) List(context.Context, broker.DeadLetterQuery) (broker.DeadLetterPage, error) {
	return broker.DeadLetterPage{}, f.err
}
func (f failedDeadLetters) Count(context.Context, broker.DeadLetterFilter) (int, error) {
	return 0, f.err
}
func (f failedDeadLetters) Redrive(context.Context, broker.DeadLetterSelection, broker.RedriveOptions) (broker.DeadLetterResult, error) {
	return broker.DeadLetterResult{}, f.err
}
func (f failedDeadLetters) Purge(context.Context, broker.DeadLetterSelection, bool) (broker.DeadLetterResult, error) {
	return broker.DeadLetterResult{}, f.err
}

var _ broker.DeadLetterSource = (*Source)(nil)

// ErrDeadLettersClosed is wrapped by the error of a call after Close.
var ErrDeadLettersClosed = errors.New("kafka: dead letters closed")

// Close refuses new calls (their error wraps ErrDeadLettersClosed) and
// waits for the calls in progress. When ctx ends first, it cancels them
// and closes their connections; they return at once, and Close returns an
// error wrapping ctx's. What a cancelled Redrive or Purge did not record
// as done stays a dead letter (a copy may already be in the source: see
// Redrive). Close is idempotent.
func (d *DeadLetters) Close(ctx context.Context) error {
	if d.abortFn == nil {
		return nil // the zero value: no call ever began
	}
	d.mu.Lock()
	d.closed = true
	active := d.active
	d.mu.Unlock()
	if active == 0 {
		return nil
	}
	done := make(chan struct{})
	go func() {
		d.calls.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		d.abortFn()
		<-done
		return fmt.Errorf("kafka: close dead letters: calls in progress were cancelled: %w", ctx.Err())
	}
}

// dlOp is one call: its ctx and its own connections.
type dlOp struct {
	d   *DeadLetters
	ctx context.Context
	cs  *conns
	tr  *kafkago.Transport
	cli *kafkago.Client
	end func()
	// parts caches partition counts of topics by name (0: missing).
	parts map[string]int
	hash  *kafkago.Hash
}

// errZeroDeadLetters is the error of every call of a DeadLetters not made
// by NewDeadLetters.
var errZeroDeadLetters = fmt.Errorf("%w: kafka: DeadLetters not made by NewDeadLetters (or Source.DeadLetters)", broker.ErrInvalidConfig)

func (d *DeadLetters) begin(ctx context.Context) (*dlOp, error) {
	if d.abortCtx == nil {
		return nil, errZeroDeadLetters
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil, ErrDeadLettersClosed
	}
	d.calls.Add(1)
	d.active++
	d.mu.Unlock()
	done := func() {
		d.mu.Lock()
		d.active--
		d.mu.Unlock()
		d.calls.Done()
	}
	if err := ctx.Err(); err != nil {
		done()
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	stopAbort := context.AfterFunc(d.abortCtx, cancel)
	cs := newConns(d.cfg.Dialer)
	// A kafka-go call that does not look at ctx returns once its
	// connection is closed.
	stopKill := context.AfterFunc(ctx, cs.kill)
	tr := transport(d.cfg.Dialer, cs)
	op := &dlOp{
		d: d, ctx: ctx, cs: cs, tr: tr,
		cli:   &kafkago.Client{Addr: d.addr, Timeout: 10 * time.Second, Transport: tr},
		parts: make(map[string]int),
		hash:  &kafkago.Hash{},
	}
	op.end = func() {
		stopKill()
		stopAbort()
		cancel()
		cs.kill()
		tr.CloseIdleConnections()
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
func (st *dlState) isDone(p int, r *dlRecord) bool {
	fp, ok := st.done[p][r.offset]
	if !ok {
		return false
	}
	if fp == fingerprint(r) {
		return true
	}
	delete(st.done[p], r.offset)
	st.stale = append(st.stale, deadLetterID(p, r.offset))
	return false
}

// fingerprint identifies a record of the dead-letter topic beyond its
// offset: a hash of its timestamp, key and value.
func fingerprint(r *dlRecord) string {
	h := fnv.New64a()
	var ts [8]byte
	binary.BigEndian.PutUint64(ts[:], uint64(r.time.UnixMilli()))
	h.Write(ts[:])
	h.Write(r.key)
	h.Write([]byte{0})
	h.Write(r.value)
	return strconv.FormatUint(h.Sum64(), 16)
}

func (o *dlOp) partitions(topic string) (int, error) {
	if n, ok := o.parts[topic]; ok {
		return n, nil
	}
	md, err := o.cli.Metadata(o.ctx, &kafkago.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return 0, fmt.Errorf("metadata of %s: %w", topic, err)
	}
	n := 0
	for _, t := range md.Topics {
		if t.Name != topic {
			continue
		}
		if t.Error != nil {
			if errors.Is(t.Error, kafkago.UnknownTopicOrPartition) {
				break
			}
			return 0, fmt.Errorf("metadata of %s: %w", topic, t.Error)
		}
		n = len(t.Partitions)
	}
	o.parts[topic] = n
	return n, nil
}

// offsets returns the first offset and the last stable offset of
// partitions 0…n-1 of topic.
func (o *dlOp) offsets(topic string, n int) (first, last map[int]int64, err error) {
	reqs := make([]kafkago.OffsetRequest, 0, 2*n)
	for p := range n {
		reqs = append(reqs, kafkago.FirstOffsetOf(p), kafkago.LastOffsetOf(p))
	}
	resp, err := o.cli.ListOffsets(o.ctx, &kafkago.ListOffsetsRequest{
		Topics:         map[string][]kafkago.OffsetRequest{topic: reqs},
		IsolationLevel: kafkago.ReadCommitted,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("list offsets of %s: %w", topic, err)
	}
	first, last = make(map[int]int64, n), make(map[int]int64, n)
	for _, po := range resp.Topics[topic] {
		if po.Error != nil {
			return nil, nil, fmt.Errorf("list offsets of %s partition %d: %w", topic, po.Partition, po.Error)
		}
		first[po.Partition], last[po.Partition] = po.FirstOffset, po.LastOffset
	}
	for p := range n {
		if _, ok := last[p]; !ok {
			return nil, nil, fmt.Errorf("list offsets of %s: no answer for partition %d", topic, p)
		}
	}
	return first, last, nil
}

// committed returns the group's committed offsets on the dead-letter
// topic (-1 where none).
func (o *dlOp) committed(n int) (map[int]int64, error) {
	d := o.d
	ids := make([]int, n)
	for i := range ids {
		ids[i] = i
	}
	resp, err := o.cli.OffsetFetch(o.ctx, &kafkago.OffsetFetchRequest{GroupID: d.group, Topics: map[string][]int{d.dlt: ids}})
	if err != nil {
		return nil, fmt.Errorf("offset fetch of group %s: %w", d.group, err)
	}
	out := make(map[int]int64, n)
	if resp.Error != nil {
		if errors.Is(resp.Error, kafkago.GroupIdNotFound) {
			return out, nil
		}
		return nil, fmt.Errorf("offset fetch of group %s: %w", d.group, resp.Error)
	}
	for _, p := range resp.Topics[d.dlt] {
		if p.Error != nil && !errors.Is(p.Error, kafkago.GroupIdNotFound) && !errors.Is(p.Error, kafkago.UnknownTopicOrPartition) {
			return nil, fmt.Errorf("offset fetch of group %s partition %d: %w", d.group, p.Partition, p.Error)
		}
		out[p.Partition] = p.CommittedOffset
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
		return nil, fmt.Errorf("dead-letter topic %s does not exist: %w", d.dlt, kafkago.UnknownTopicOrPartition)
	}
	var (
		com         map[int]int64
		marks       map[string][]byte
		first, last map[int]int64
	)
	for try := 0; ; try++ {
		if com, err = o.committed(n); err != nil {
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
			if max(com[p], hw[p].off) > last[p] {
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
			d.log.Warn("kafka: dead letters: the recorded progress lies past the end of the partition, or the record before it is not the one it was recorded after (topic recreated?); starting over",
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
		err := o.scan(o.d.dlt, p, pr.off-1, pr.off, func(r *dlRecord) (bool, error) {
			same = r.offset == pr.off-1 && fingerprint(r) == pr.fp
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
		err := o.scan(d.doneTopic, p, first[p], last[p], func(r *dlRecord) (bool, error) {
			marks[string(r.key)] = r.value
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

// dlRecord is one record read by scan.
type dlRecord struct {
	offset  int64
	key     []byte
	value   []byte
	headers []kafkago.Header
	time    time.Time
}

// scanMaxBytes bounds one fetch response of scan (a record batch larger
// than it still comes whole).
const scanMaxBytes = 1 << 20

// scan reads the records of topic's partition p from offset from up to
// (not including) to, in offset order, read-committed: transaction
// markers and the records of aborted transactions are skipped. visit
// returns true to stop.
func (o *dlOp) scan(topic string, p int, from, to int64, visit func(*dlRecord) (bool, error)) error {
	offset := from
	empty := 0
	for offset < to {
		if err := o.ctx.Err(); err != nil {
			return err
		}
		msg, err := o.tr.RoundTrip(o.ctx, o.d.addr, &fetchapi.Request{
			ReplicaID:      -1,
			MaxWaitTime:    10,
			MinBytes:       1,
			MaxBytes:       requestMaxBytes,
			IsolationLevel: int8(kafkago.ReadCommitted),
			SessionID:      -1,
			SessionEpoch:   -1,
			Topics: []fetchapi.RequestTopic{{
				Topic: topic,
				Partitions: []fetchapi.RequestPartition{{
					Partition:          int32(p),
					CurrentLeaderEpoch: -1,
					FetchOffset:        offset,
					LogStartOffset:     -1,
					PartitionMaxBytes:  scanMaxBytes,
				}},
			}},
		})
		if err != nil {
			return fmt.Errorf("fetch %s partition %d at %d: %w", topic, p, offset, err)
		}
		res, ok := msg.(*fetchapi.Response)
		switch {
		case !ok:
			return fmt.Errorf("fetch %s: unexpected response %T", topic, msg)
		case res.ErrorCode != 0:
			return fmt.Errorf("fetch %s partition %d at %d: %w", topic, p, offset, kafkago.Error(res.ErrorCode))
		case len(res.Topics) != 1 || len(res.Topics[0].Partitions) != 1:
			return fmt.Errorf("fetch %s: the response does not hold the partition asked for", topic)
		case res.Topics[0].Partitions[0].ErrorCode != 0:
			return fmt.Errorf("fetch %s partition %d at %d: %w", topic, p, offset, kafkago.Error(res.Topics[0].Partitions[0].ErrorCode))
		}
		rp := &res.Topics[0].Partitions[0]
		next, stop, err := decodeScan(rp, offset, to, visit)
		if err != nil || stop {
			return err
		}
		if next == offset {
			// Nothing at or past offset: the partition ends earlier than
			// it said (truncated), or the response was cut short.
			if rp.HighWatermark <= offset {
				return nil
			}
			if empty++; empty == 3 {
				return fmt.Errorf("fetch %s partition %d at %d: no records returned below the high-water mark %d", topic, p, offset, rp.HighWatermark)
			}
			continue
		}
		empty = 0
		offset = next
	}
	return nil
}

// decodeScan visits the records of a fetch response from offset up to to,
// and returns the offset to fetch next.
func decodeScan(rp *fetchapi.ResponsePartition, offset, to int64, visit func(*dlRecord) (bool, error)) (int64, bool, error) {
	var batches []protocol.RecordReader
	switch rs := rp.RecordSet.Records.(type) {
	case nil:
	case *protocol.RecordStream:
		batches = rs.Records
	default:
		batches = []protocol.RecordReader{rs}
	}
	aborted := append([]fetchapi.ResponseTransaction(nil), rp.AbortedTransactions...)
	sort.Slice(aborted, func(i, j int) bool { return aborted[i].FirstOffset < aborted[j].FirstOffset })
	abortedPIDs := make(map[int64]bool)
	for _, b := range batches {
		var (
			base    int64
			pid     int64 = -1
			control bool
			txn     bool
		)
		switch b := b.(type) {
		case *protocol.ControlBatch:
			base, pid, control = b.BaseOffset, b.ProducerID, true
		case *protocol.RecordBatch:
			base, pid, txn = b.BaseOffset, b.ProducerID, b.Attributes.Transactional()
		case *protocol.MessageSet:
			base = b.BaseOffset
		}
		for len(aborted) > 0 && aborted[0].FirstOffset <= base {
			abortedPIDs[aborted[0].ProducerID] = true
			aborted = aborted[1:]
		}
		skip := control || (txn && abortedPIDs[pid])
		for {
			r, err := b.ReadRecord()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return offset, false, err
			}
			off := r.Offset
			var rec *dlRecord
			if control {
				k, _ := protocol.ReadAll(r.Key)
				if len(k) == 4 && k[2] == 0 && k[3] == 0 { // abort marker
					delete(abortedPIDs, pid)
				}
			} else if !skip && off >= offset && off < to {
				rec = &dlRecord{offset: off, time: r.Time}
				if rec.key, err = protocol.ReadAll(r.Key); err == nil {
					rec.value, err = protocol.ReadAll(r.Value)
				}
				if len(r.Headers) > 0 {
					rec.headers = append([]kafkago.Header(nil), r.Headers...)
				}
			}
			closeBytes(r.Key)
			closeBytes(r.Value)
			if err != nil {
				return offset, false, err
			}
			if off < offset {
				continue
			}
			if off >= to {
				return to, false, nil
			}
			offset = off + 1
			if rec != nil {
				stop, err := visit(rec)
				if err != nil || stop {
					return offset, stop, err
				}
			}
		}
	}
	return offset, false, nil
}

// deadLetterID is the ID of the dead letter at offset off of partition p of
// the dead-letter topic.
func deadLetterID(p int, off int64) string {
	return strconv.Itoa(p) + ":" + strconv.FormatInt(off, 10)
}

// parseDeadLetterID parses "<partition>:<offset>".
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
	return 0, 0, fmt.Errorf("%w: kafka: dead letters: cursor %.40q is not one List returned", broker.ErrInvalidConfig, c)
}

// deadLetter makes the DeadLetter of record r of partition p. The body is
// whole.
func (d *DeadLetters) deadLetter(p int, r *dlRecord) broker.DeadLetter {
	h := fromHeaders(r.headers)
	dl := broker.DeadLetter{
		ID: deadLetterID(p, r.offset),
		Message: broker.Message{
			ID:     messageID(d.dlt, p, r.offset),
			Topic:  d.dlt,
			Key:    r.key,
			Body:   r.value,
			Header: h,
			Time:   r.time,
		},
		BodySize:  len(r.value),
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
// wraps ctx's too (kafka-go may report the end of a deadline as a network
// timeout).
func (d *DeadLetters) fail(ctx context.Context, what string, err error) error {
	if err == nil {
		return nil
	}
	if cerr := ctxEnded(ctx); cerr != nil && !errors.Is(err, cerr) {
		err = fmt.Errorf("%w: %w", cerr, err)
	}
	return fmt.Errorf("kafka: dead letters of %s: %s: %w", d.dlt, what, err)
}

// List implements broker.DeadLetters: the dead letters not yet redriven or
// purged, by partition and then offset, read without consuming anything.
// The cursor is opaque (it encodes the position to go on from); a
// malformed one is refused with an error wrapping broker.ErrInvalidConfig,
// and one naming a partition the topic does not have with one wrapping
// broker.ErrDeadLetterNotFound.
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
	for i := cp; i < len(st.parts) && page.Next == ""; i++ {
		pt := &st.parts[i]
		from, to, ok := scanRange(pt, b)
		if !ok {
			continue
		}
		if i == cp && co > from {
			from = co
		}
		err := op.scan(d.dlt, pt.id, from, to, func(r *dlRecord) (bool, error) {
			if st.isDone(pt.id, r) {
				return false, nil
			}
			dl := d.deadLetter(pt.id, r)
			if !q.Match(&dl) {
				return false, nil
			}
			if len(page.Items) == q.Limit {
				page.Next = encodeCursor(pt.id, r.offset)
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
	n := 0
	for i := range st.parts {
		pt := &st.parts[i]
		from, to, ok := scanRange(pt, b)
		if !ok {
			continue
		}
		err := op.scan(d.dlt, pt.id, from, to, func(r *dlRecord) (bool, error) {
			if st.isDone(pt.id, r) {
				return false, nil
			}
			if f.IsZero() {
				n++
				return false, nil
			}
			dl := d.deadLetter(pt.id, r)
			if f.Match(&dl) {
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
// partition its key hashes to (kafkago.Hash). The copies of a batch (up to
// 256 dead letters) are written with acks=all; only once the brokers
// confirmed them are the dead letters recorded as done (see the package
// documentation). A crash in between leaves them dead letters: the next
// Redrive sends them again (a duplicate, never a loss).
//
// Headers do not choose where a copy goes: without opts.Destination, a
// dead letter whose reason names another topic (HeaderSource, else
// HeaderTopic), or none, is skipped with an error wrapping
// broker.ErrNoSource, as is one whose topic does not exist (it is not
// created); one redriven opts.Limit() times already with one wrapping
// broker.ErrRedriveLimit; one whose copy the topic refuses as too large
// with one wrapping kafkago.MessageSizeTooLarge. A Destination that does
// not exist fails the call (wrapping broker.ErrNoSource), and one that is
// the dead-letter topic or a done topic (wrapping broker.ErrInvalidConfig),
// before anything is done. Ids that are malformed, name no partition, lie
// past the end of their partition, hold no dead letter or were redriven or
// purged already are Missing.
func (d *DeadLetters) Redrive(ctx context.Context, sel broker.DeadLetterSelection, opts broker.RedriveOptions) (broker.DeadLetterResult, error) {
	return d.handle(ctx, sel, opts, false, opts.DryRun)
}

// Purge implements broker.DeadLetters. Kafka cannot delete single records:
// a purged dead letter stays in the dead-letter topic until its retention
// deletes it, but is recorded as done, so List, Count and Redrive skip it
// (the package documentation says how). Ids are handled as by Redrive.
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
	if opts.Destination != "" {
		if err := validTopicName(opts.Destination); err != nil {
			return res, d.fail(ctx, what, fmt.Errorf("%w: destination: %w", broker.ErrInvalidConfig, err))
		}
		if err := d.ownTopic(opts.Destination); err != nil && !purge {
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
		err := op.scan(d.dlt, pt.id, pt.start, to, func(r *dlRecord) (bool, error) {
			if st.isDone(pt.id, r) {
				// Done already: an id asked for stays in wanted, and is
				// Missing.
				w.alreadyDone(r)
				return false, nil
			}
			if wanted != nil {
				if _, ok := wanted[pt.id][r.offset]; !ok {
					w.keep()
					return false, nil
				}
				delete(wanted[pt.id], r.offset)
			}
			dl := d.deadLetter(pt.id, r)
			if !filter.Match(&dl) {
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
			sort.Slice(left, func(i, j int) bool { return left[i] < left[j] })
			for _, off := range left {
				res.Missing = append(res.Missing, wanted[pt.id][off]) // a gap: no dead letter there
			}
		}
	}
	if err := w.cleanStale(); err != nil {
		d.log.Warn("kafka: dead letters: cleaning up done markers failed; they are cleaned up by a later call", "error", err)
	}
	return res, res.Err()
}

// dlCopy is the redriven copy of a dead letter, or why it is skipped.
type dlCopy struct {
	topic     string
	partition int
	rec       outRecord
	skip      error
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
	part := -1
	if target == origin && dl.Partition >= 0 && dl.Partition < n {
		part = dl.Partition
	} else {
		ids := make([]int, n)
		for i := range ids {
			ids[i] = i
		}
		part = o.hash.Balance(kafkago.Message{Key: dl.Message.Key}, ids...)
	}
	return &dlCopy{topic: target, partition: part, rec: outRecord{
		time:    now,
		key:     dl.Message.Key,
		value:   dl.Message.Body,
		headers: toHeaders(ch),
	}}, nil
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

func (w *dlWork) alreadyDone(r *dlRecord) {
	off := r.offset
	if w.contiguous {
		w.prefix = off + 1
		w.prefixFP = fingerprint(r)
		w.covered = append(w.covered, deadLetterID(w.pt.id, off))
	}
}

func (w *dlWork) keep() { w.contiguous = false }

func (w *dlWork) add(r *dlRecord, id string, cp *dlCopy) error {
	off := r.offset
	fp := fingerprint(r)
	w.batch = append(w.batch, dlItem{off: off, id: id, fp: fp, cp: cp, inPrefix: w.contiguous})
	if w.contiguous {
		w.prefix = off + 1
		w.prefixFP = fp
	}
	if len(w.batch) >= redriveBatch {
		return w.flush()
	}
	return nil
}

// flush sends the batch's copies, waits for their acks, then records the
// batch as done: done markers for the dead letters past the contiguous
// prefix and a progress marker of the prefix, in one request to the done
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
	tooLarge, err := o.sendCopies(batch)
	if err != nil {
		return err
	}
	if len(tooLarge) > 0 {
		// The prefix ends at the first dead letter left; those after it
		// get done markers instead.
		cut := false
		for i := range batch {
			it := &batch[i]
			if _, skip := tooLarge[i]; skip && it.inPrefix && !cut {
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
	var marks []outRecord
	value := "redriven " + w.now.UTC().Format(time.RFC3339Nano)
	if w.purge {
		value = "purged " + w.now.UTC().Format(time.RFC3339Nano)
	}
	for i, it := range batch {
		if _, skip := tooLarge[i]; skip {
			continue
		}
		if !it.inPrefix {
			marks = append(marks, outRecord{key: []byte(it.id), value: []byte(value + " " + it.fp)})
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
		marks = append(marks, outRecord{key: []byte(k), value: []byte(v)})
		w.written[k] = true
	}
	if len(marks) > 0 {
		if err := o.writeDone(marks); err != nil {
			var unknown []string
			for i, it := range batch {
				if _, skip := tooLarge[i]; !skip {
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
			o.d.log.Warn("kafka: dead letters: committing the progress to the group failed; the done topic holds it", "partition", w.pt.id, "offset", w.prefix, "error", err)
		} else {
			w.pt.committed = max(w.pt.committed, w.prefix)
		}
	}
	for i, it := range batch {
		if err, skip := tooLarge[i]; skip {
			w.res.Skipped = append(w.res.Skipped, broker.NewSkipped(it.id, err))
			continue
		}
		w.res.Done = append(w.res.Done, it.id)
	}
	return nil
}

// sendCopies writes the copies of batch, grouped by topic and partition in
// the batch's order, with acks=all. It returns the copies (by index in
// batch) that their topic refused as larger than its max.message.bytes, or
// whose topic was deleted meanwhile, with why.
func (o *dlOp) sendCopies(batch []dlItem) (map[int]error, error) {
	type dest struct {
		topic string
		part  int
	}
	var order []dest
	groups := make(map[dest][]int)
	for i, it := range batch {
		if it.cp == nil {
			continue
		}
		k := dest{it.cp.topic, it.cp.partition}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], i)
	}
	var tooLarge map[int]error
	for _, k := range order {
		idx := groups[k]
		recs := make([]outRecord, len(idx))
		for j, i := range idx {
			recs[j] = batch[i].cp.rec
		}
		big, err := o.produceSplit(k.topic, k.part, recs)
		if errors.Is(err, kafkago.UnknownTopicOrPartition) {
			// The topic was deleted since the batch began: its dead
			// letters stay (some copies may have gone before it was).
			o.parts[k.topic] = 0
			big = make(map[int]error, len(idx))
			for j := range idx {
				big[j] = fmt.Errorf("%w: topic %s does not exist any more: %w", broker.ErrNoSource, k.topic, err)
			}
		} else if err != nil {
			return nil, err
		}
		for j, e := range big {
			if tooLarge == nil {
				tooLarge = make(map[int]error)
			}
			tooLarge[idx[j]] = e
		}
	}
	return tooLarge, nil
}

// produceSplit writes recs as produce does; a request the topic refuses as
// too large (its max.message.bytes, which may be lower than produceChunk)
// is split in two and each half written again, down to single records. It
// returns the records (by index in recs) refused alone.
func (o *dlOp) produceSplit(topic string, part int, recs []outRecord) (map[int]error, error) {
	err := o.produce(topic, part, recs)
	if err == nil || !errors.Is(err, kafkago.MessageSizeTooLarge) && !errors.Is(err, kafkago.RecordListTooLarge) {
		return nil, err
	}
	// produce writes in chunks: go on from the first chunk not written
	// (writing the others again would duplicate them).
	var pe *partialProduce
	written := 0
	if errors.As(err, &pe) {
		written = pe.written
	}
	rest := recs[written:]
	if len(rest) == 1 {
		return map[int]error{written: fmt.Errorf("%w: the copy (%d bytes) is larger than topic %s takes (max.message.bytes)", kafkago.MessageSizeTooLarge, recordSize(&rest[0]), topic)}, nil
	}
	half := len(rest) / 2
	out := make(map[int]error)
	for _, h := range [][2]int{{0, half}, {half, len(rest)}} {
		big, err := o.produceSplit(topic, part, rest[h[0]:h[1]])
		if err != nil {
			return nil, err
		}
		for j, e := range big {
			out[written+h[0]+j] = e
		}
	}
	return out, nil
}

// partialProduce is the error of produce after it wrote the first written
// records.
type partialProduce struct {
	written int
	err     error
}

func (e *partialProduce) Error() string { return e.err.Error() }
func (e *partialProduce) Unwrap() error { return e.err }

// produceChunk bounds the records of one Produce request (their keys,
// values and headers), well under the 1 MB a topic's max.message.bytes
// allows by default; a record larger than it goes alone. A topic that
// takes less refuses the request; produceSplit then splits it.
const produceChunk = 512 << 10

// produce writes recs to topic's partition part, in order, in requests of
// up to produceChunk bytes, each acknowledged by all in-sync replicas. A
// failure after some requests went through is a *partialProduce.
func (o *dlOp) produce(topic string, part int, recs []outRecord) error {
	written := 0
	for len(recs) > 0 {
		n, size := 0, 0
		for n < len(recs) {
			sz := recordSize(&recs[n])
			if n > 0 && size+sz > produceChunk {
				break
			}
			size += sz
			n++
		}
		if err := o.produceOnce(topic, part, recs[:n]); err != nil {
			if written > 0 {
				return &partialProduce{written: written, err: err}
			}
			return err
		}
		recs = recs[n:]
		written += n
	}
	return nil
}

func recordSize(r *outRecord) int {
	n := 64 // per-record overhead, roughly
	n += len(r.key) + len(r.value)
	for _, h := range r.headers {
		n += len(h.Key) + len(h.Value) + 8
	}
	return n
}

func (o *dlOp) produceOnce(topic string, part int, recs []outRecord) error {
	var err error
	for try := 0; ; try++ {
		err = o.produceRequest(topic, part, recs)
		// A leader that moved: ask again (kafka-go's client refreshes
		// its metadata on this error).
		if err == nil || try == 4 || !errors.Is(err, kafkago.NotLeaderForPartition) && !errors.Is(err, kafkago.LeaderNotAvailable) {
			break
		}
		select {
		case <-o.ctx.Done():
			return o.ctx.Err()
		case <-time.After(time.Duration(50<<try) * time.Millisecond):
		}
	}
	return err
}

// outRecord is a record to write. kafka-go's Records are read once; a
// request sent again (split, or retried) gets new ones (see records).
type outRecord struct {
	time       time.Time
	key, value []byte
	tomb       bool // a null value
	headers    []kafkago.Header
}

// records makes the kafka-go records of recs, to be read once.
func records(recs []outRecord) []kafkago.Record {
	out := make([]kafkago.Record, len(recs))
	for i, r := range recs {
		out[i] = kafkago.Record{Time: r.time, Key: kafkago.NewBytes(r.key), Headers: r.headers}
		if !r.tomb {
			out[i].Value = kafkago.NewBytes(r.value)
		}
	}
	return out
}

func (o *dlOp) produceRequest(topic string, part int, recs []outRecord) error {
	resp, err := o.cli.Produce(o.ctx, &kafkago.ProduceRequest{
		Topic:        topic,
		Partition:    part,
		RequiredAcks: kafkago.RequireAll,
		Records:      kafkago.NewRecordReader(records(recs)...),
	})
	if err == nil && resp != nil {
		err = resp.Error
		if err == nil {
			for i, e := range resp.RecordErrors {
				err = fmt.Errorf("record %d: %w", i, e)
				break
			}
		}
	}
	if err != nil {
		return fmt.Errorf("write %d record(s) to %s partition %d: %w", len(recs), topic, part, err)
	}
	return nil
}

// writeDone writes done markers (or tombstones) to the done topic,
// creating it (compacted, one partition) the first time.
func (o *dlOp) writeDone(recs []outRecord) error {
	d := o.d
	n, err := o.partitions(d.doneTopic)
	if err != nil {
		return err
	}
	if n == 0 {
		resp, err := o.cli.CreateTopics(o.ctx, &kafkago.CreateTopicsRequest{Topics: []kafkago.TopicConfig{{
			Topic: d.doneTopic, NumPartitions: 1, ReplicationFactor: -1,
			ConfigEntries: []kafkago.ConfigEntry{{ConfigName: "cleanup.policy", ConfigValue: "compact"}},
		}}})
		if err != nil {
			return fmt.Errorf("create %s: %w", d.doneTopic, err)
		}
		if err := resp.Errors[d.doneTopic]; err != nil && !errors.Is(err, kafkago.TopicAlreadyExists) {
			return fmt.Errorf("create %s: %w", d.doneTopic, err)
		}
		o.parts[d.doneTopic] = 1
		if err == nil && resp.Errors[d.doneTopic] == nil {
			d.mu.Lock()
			d.policyOK = true // created here, compacted
			d.mu.Unlock()
		}
	}
	if err := o.checkDonePolicy(); err != nil {
		return err
	}
	// A topic just created may take a moment to be writable.
	for try := 0; ; try++ {
		err = o.produce(d.doneTopic, 0, recs)
		if err == nil || try == 20 || !errors.Is(err, kafkago.UnknownTopicOrPartition) && !errors.Is(err, kafkago.LeaderNotAvailable) && !errors.Is(err, kafkago.NotLeaderForPartition) {
			return err
		}
		select {
		case <-o.ctx.Done():
			return o.ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
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
	resp, err := o.cli.DescribeConfigs(o.ctx, &kafkago.DescribeConfigsRequest{Resources: []kafkago.DescribeConfigRequestResource{{
		ResourceType: kafkago.ResourceTypeTopic, ResourceName: d.doneTopic, ConfigNames: []string{"cleanup.policy"},
	}}})
	var policy string
	found := false
	if err == nil {
		for _, r := range resp.Resources {
			if r.ResourceName != d.doneTopic {
				continue
			}
			if r.Error != nil {
				err = r.Error
				break
			}
			for _, c := range r.ConfigEntries {
				if c.ConfigName == "cleanup.policy" {
					policy, found = c.ConfigValue, true
				}
			}
		}
	}
	if err != nil {
		if errors.Is(err, kafkago.TopicAuthorizationFailed) || errors.Is(err, kafkago.ClusterAuthorizationFailed) {
			d.log.Warn("kafka: dead letters: not allowed to read the done topic's cleanup.policy; going on as if it were compact (if it deletes by retention, handled dead letters come back when their markers expire)", "done_topic", d.doneTopic, "error", err)
			d.mu.Lock()
			d.policyOK = true
			d.mu.Unlock()
			return nil
		}
		return fmt.Errorf("describe the config of %s: %w", d.doneTopic, err)
	}
	if !found || strings.TrimSpace(policy) != "compact" {
		return fmt.Errorf("%w: kafka: dead letters: done topic %s has cleanup.policy %q; it must be \"compact\" (without \"delete\"), or its done markers expire and the dead letters they mark come back: alter its config, or delete it and let the adapter create it", broker.ErrInvalidConfig, d.doneTopic, policy)
	}
	d.mu.Lock()
	d.policyOK = true
	d.mu.Unlock()
	return nil
}

// commit moves the group's committed offset of partition p forward to
// off, never back as far as this call sees (a concurrent call may have
// committed further). Two calls may still race (check, then commit): the
// group's offset is kept for tools that show a group's lag, and the
// progress markers of the done topic, which cannot move back, decide
// where the dead letters start (see load).
func (o *dlOp) commit(p int, off int64, reset bool) error {
	d := o.d
	if !reset {
		cur, err := o.committed(p + 1)
		if err != nil {
			return err
		}
		if c, ok := cur[p]; ok && c >= off {
			return nil
		}
	}
	resp, err := o.cli.OffsetCommit(o.ctx, &kafkago.OffsetCommitRequest{
		GroupID:      d.group,
		GenerationID: -1,
		Topics:       map[string][]kafkago.OffsetCommit{d.dlt: {{Partition: p, Offset: off}}},
	})
	if err != nil {
		return err
	}
	for _, pc := range resp.Topics[d.dlt] {
		if pc.Error != nil {
			return pc.Error
		}
	}
	return nil
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
	var tomb []outRecord
	var keep []string
	for _, k := range st.stale {
		id := strings.TrimPrefix(k, progressKeyPrefix)
		if p, _, ok := parseDeadLetterID(id); ok && st.reset[p] {
			tomb = append(tomb, outRecord{key: []byte(k), tomb: true})
			continue
		}
		keep = append(keep, k)
	}
	if len(tomb) > 0 {
		if err := o.produce(d.doneTopic, 0, tomb); err != nil {
			return fmt.Errorf("reset the progress: %w", err)
		}
	}
	st.stale = keep
	n := len(st.parts)
	com, err := o.committed(n)
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
	recs := make([]outRecord, 0, len(w.st.stale))
	seen := make(map[string]bool)
	for _, k := range w.st.stale {
		if w.written[k] || seen[k] {
			continue
		}
		seen[k] = true
		recs = append(recs, outRecord{key: []byte(k), tomb: true})
	}
	w.st.stale = nil
	if len(recs) == 0 {
		return nil
	}
	return w.op.produce(w.op.d.doneTopic, 0, recs)
}
