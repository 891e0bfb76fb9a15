package kafka

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"math"
	"sort"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	fetchapi "github.com/segmentio/kafka-go/protocol/fetch"

	"github.com/queuekit/queuekit/internal/offsets"
	"github.com/queuekit/queuekit/retry"
)

// fetch reads one partition with Fetch requests of its own, and queues the
// records of each response on their lanes a chunk at a time, taking the
// lock once per chunk.
//
// It speaks the Fetch API through kafka-go's protocol package rather than
// through kafkago.Conn or kafkago.Reader, because both hide what
// read-committed consumption needs: they hand out transaction markers
// (control records) as ordinary messages and drop the producer ids and the
// aborted-transactions list that tell which records an aborted transaction
// wrote. It is not a kafkago.Reader for two more reasons: the Reader hands
// records over one by one through a channel from a goroutine of its own,
// and its Close waits for a pending fetch (up to MaxWait), where here the
// end of the generation cancels the request at once.
//
// The fetcher owns offset, pending and ahead. Beyond the MaxInFlight
// records its partition holds on its lanes, it holds the rest of the
// response it is queueing (pending) and the next response (ahead), fetched
// while the current one is handled: a response is decoded whole before its
// records can be queued, so waiting for the next one only once the current
// one is queued would leave handlers idle meanwhile. At MaxInFlight it stops
// queueing (backpressure) until handled records make room, and fetches no
// further than the one response ahead.
func (g *generation) fetch(ctx context.Context, p *partition) {
	s := g.s
	var (
		offset   = p.start
		resolved bool      // offset checked against the partition's log since the last failure
		pending  []*record // fetched, not yet on a lane
		fails    int       // consecutive failures, for the backoff
		// ahead is the next response, fetched (from offset) while the
		// records of the current one are queued and handled, so that
		// handlers do not wait for a whole response to arrive and be
		// decoded; nil when none is on its way.
		ahead chan fetched
	)
	defer func() {
		if ahead != nil {
			<-ahead // ctx is done: the request returns at once
		}
	}()
	for {
		if len(pending) > 0 {
			var ok bool
			if pending, ok = g.queue(ctx, p, pending); !ok {
				return
			}
			if len(pending) > 0 {
				continue // queue waited for room and was woken; queue more
			}
		}
		if fails > 0 && !retry.Sleep(ctx, backoff(fails)) {
			return
		}
		if !resolved {
			sent := time.Now()
			off, err := g.resolve(ctx, p, offset)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				fails++
				switch {
				case s.noteTopicError(err):
				case staleLeader(err):
					g.followLeader(sent)
					s.log.Info("kafka: the partition's leader moved or its broker is unreachable; reading the cluster's layout again", "partition", p.id, "error", err)
				default:
					s.log.Warn("kafka: reading the partition's offsets failed; retrying", "partition", p.id, "error", err)
				}
				continue
			}
			offset, resolved = off, true
		}
		var f fetched
		if ahead != nil {
			select {
			case f = <-ahead:
				ahead = nil
			case <-ctx.Done():
				return
			}
		} else {
			if !s.awaitResumed(ctx) {
				return
			}
			f = g.request(ctx, p, offset)
		}
		recs, next, err := g.decode(p, f)
		if ctx.Err() != nil {
			return
		}
		offset = next
		pending = recs
		switch {
		case err == nil, errors.Is(err, kafkago.RequestTimedOut):
			fails = 0
			if err == nil {
				ahead = make(chan fetched, 1)
				go func(offset int64) {
					// A paused Source sends no Fetch request, ahead or not.
					if !s.awaitResumed(ctx) {
						ahead <- fetched{offset: offset, err: ctx.Err()}
						return
					}
					ahead <- g.request(ctx, p, offset)
				}(offset)
			}
		case errors.Is(err, kafkago.OffsetOutOfRange):
			// Deleted by retention, or beyond the end (log truncated, topic
			// recreated): resolve says where to go on.
			resolved = false
			fails++
		default:
			// Leader moved, connection broken, or a broker error: try again
			// (the transport routes to the partition's current leader).
			switch {
			case s.noteTopicError(err):
			case staleLeader(err):
				g.followLeader(f.sent)
				s.log.Info("kafka: the partition's leader moved or its broker is unreachable; reading the cluster's layout again",
					"partition", p.id, "offset", offset, "error", err)
			default:
				s.log.Warn("kafka: fetch failed; retrying", "partition", p.id, "offset", offset, "error", err)
			}
			resolved = false
			fails++
		}
	}
}

// resolve checks offset against the partition's log: a partition without a
// committed offset starts at StartOffset (which kafka-go passes as
// FirstOffset or LastOffset), an offset below the partition's first
// (deleted by retention) goes on at the first, and one beyond its end
// starts over (resetBeyondEnd).
func (g *generation) resolve(ctx context.Context, p *partition, offset int64) (int64, error) {
	s := g.s
	// "Beyond the end" is decided against the high-water mark, never the
	// last stable offset: with ReadCommitted a committed offset between the
	// two (committed by a read-uncommitted member past a transaction still
	// open, or by an offset reset to the latest) is valid, and the fetch
	// waits there until the transaction ends. Taken for a truncated log, it
	// would make the member start over and handle the partition again.
	first, hwm, err := s.partitionOffsets(ctx, p.id, kafkago.ReadUncommitted)
	if err != nil {
		return offset, err
	}
	// last is where StartOffset LastOffset starts: the end of what this
	// member reads — with ReadCommitted the last stable offset, as Kafka's
	// own consumers do, so that an open transaction's records are not
	// skipped once it commits.
	last := func() (int64, error) {
		if s.cfg.Isolation != ReadCommitted {
			return hwm, nil
		}
		_, lso, err := s.partitionOffsets(ctx, p.id, kafkago.ReadCommitted)
		return lso, err
	}
	switch {
	case offset == kafkago.LastOffset:
		return last()
	case offset == kafkago.FirstOffset:
		return first, nil
	case offset < first:
		// Retention deleted records before they were handled: carry on
		// from the oldest, as kafkago.Reader does.
		s.log.Error("kafka: offset out of range; skipping to the first offset",
			"partition", p.id, "offset", offset, "first", first)
		return first, nil
	case offset > hwm:
		// Beyond the end: the log was truncated or the topic recreated.
		// Waiting for the log to grow past the stale offset would skip
		// every record produced below it.
		end := hwm
		if s.cfg.StartOffset == kafkago.LastOffset {
			if end, err = last(); err != nil {
				return offset, err
			}
		}
		return g.resetBeyondEnd(p, offset, first, end), nil
	}
	return offset, nil
}

// partitionOffsets returns the first offset of partition id and its end as
// seen with isolation: the high-water mark (ReadUncommitted) or the last
// stable offset (ReadCommitted).
func (s *Source) partitionOffsets(ctx context.Context, id int, isolation kafkago.IsolationLevel) (first, last int64, err error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	topic := s.cfg.Topic
	resp, err := s.fetchCli.ListOffsets(ctx, &kafkago.ListOffsetsRequest{
		Topics:         map[string][]kafkago.OffsetRequest{topic: {kafkago.FirstOffsetOf(id), kafkago.LastOffsetOf(id)}},
		IsolationLevel: isolation,
	})
	if err != nil {
		return 0, 0, err
	}
	for _, po := range resp.Topics[topic] {
		if po.Partition == id {
			if po.Error != nil {
				return 0, 0, po.Error
			}
			return po.FirstOffset, po.LastOffset, nil
		}
	}
	return 0, 0, fmt.Errorf("kafka: no offsets for partition %d of %s", id, topic)
}

// requestMaxBytes is the request-level limit of a fetch. A fetch asks for
// one partition, whose own limit (MaxBytes) bounds the response, so the
// request's limit is set as high as it goes (a broker caps it with its own
// fetch.max.bytes): a response must never end at the request's limit,
// where a broker may take a shortcut — kfake then leaves out the
// aborted-transactions list, and a read-committed member would hand out
// the records of aborted transactions. Twice MaxBytes would not do: a
// record batch larger than MaxBytes after smaller ones still crosses it.
const requestMaxBytes = math.MaxInt32

// fetched is the outcome of one Fetch request for a partition.
type fetched struct {
	offset int64     // asked for
	sent   time.Time // when the request was sent (see followLeader)
	part   *fetchapi.ResponsePartition
	err    error
}

// request sends one Fetch request for p from offset.
func (g *generation) request(ctx context.Context, p *partition, offset int64) fetched {
	s := g.s
	cfg := &s.cfg
	// The broker answers within MaxWait; Timeout bounds the rest.
	rctx, cancel := context.WithTimeout(ctx, cfg.MaxWait+cfg.Timeout)
	defer cancel()
	sent := time.Now()
	msg, err := s.fetchTr.RoundTrip(rctx, s.addr, &fetchapi.Request{
		ReplicaID:      -1,
		MaxWaitTime:    int32(cfg.MaxWait.Milliseconds()),
		MinBytes:       int32(cfg.MinBytes),
		MaxBytes:       requestMaxBytes,
		IsolationLevel: int8(cfg.Isolation.level()),
		SessionID:      -1,
		SessionEpoch:   -1,
		Topics: []fetchapi.RequestTopic{{
			Topic: cfg.Topic,
			Partitions: []fetchapi.RequestPartition{{
				Partition:          int32(p.id),
				CurrentLeaderEpoch: -1,
				FetchOffset:        offset,
				LogStartOffset:     -1,
				PartitionMaxBytes:  int32(cfg.MaxBytes),
			}},
		}},
	})
	f := fetched{offset: offset, sent: sent, err: err}
	if err != nil {
		return f
	}
	res, ok := msg.(*fetchapi.Response)
	switch {
	case !ok:
		f.err = fmt.Errorf("kafka: fetch: unexpected response %T", msg)
	case res.ErrorCode != 0:
		f.err = kafkago.Error(res.ErrorCode)
	case len(res.Topics) != 1 || len(res.Topics[0].Partitions) != 1:
		f.err = errors.New("kafka: fetch: the response does not hold the partition asked for")
	case res.Topics[0].Partitions[0].ErrorCode != 0:
		f.err = kafkago.Error(res.Topics[0].Partitions[0].ErrorCode)
	default:
		f.part = &res.Topics[0].Partitions[0]
	}
	return f
}

// decode queues the records of a fetched response and returns the offset to
// fetch next and the records it could not queue yet for want of room (see
// queueLocked). It queues records a chunk at a time while it reads the
// response, so that handling starts before a large response is read to its
// end. The read never waits for room: records that do not fit are
// returned. Records read before an error are kept.
//
// Control records (transaction markers) are never handed out, whatever the
// isolation; with ReadCommitted neither are the records of aborted
// transactions, found as Kafka consumers do: the response lists, per
// producer id, the first offset of each aborted transaction; a data batch of
// that producer from there on is skipped, up to the producer's abort marker.
// Skipped records still count as handled for the commit, so that the
// committed offset moves past them.
func (g *generation) decode(p *partition, f fetched) ([]*record, int64, error) {
	s := g.s
	cfg := &s.cfg
	offset := f.offset
	if f.err != nil {
		return nil, offset, f.err
	}
	readCommitted := cfg.Isolation == ReadCommitted
	rp := f.part
	var batches []protocol.RecordReader
	switch rs := rp.RecordSet.Records.(type) {
	case nil:
	case *protocol.RecordStream:
		batches = rs.Records
	default:
		batches = []protocol.RecordReader{rs}
	}
	var (
		aborted     []fetchapi.ResponseTransaction // not yet reached, by first offset
		abortedPIDs map[int64]bool                 // producers inside an aborted transaction
		// handedTxn holds the producers whose transactional records this
		// response handed out since their last marker: an abort marker of
		// one of them means the broker's aborted-transactions list missed
		// a transaction, which is logged (see below).
		handedTxn map[int64]bool
	)
	if readCommitted && len(rp.AbortedTransactions) > 0 {
		aborted = append(aborted, rp.AbortedTransactions...)
		sort.Slice(aborted, func(i, j int) bool { return aborted[i].FirstOffset < aborted[j].FirstOffset })
		abortedPIDs = make(map[int64]bool)
	}
	var (
		recs  []*record // read and not queued
		block []record  // records are allocated in blocks, not one by one
		full  bool      // the partition had no room: stop trying until the end
	)
	byKey := cfg.Ordering == ByKey
	// slot returns the next record of the current block, zeroed: records
	// are built in place (a record holds its first delivery, too large to
	// copy around).
	slot := func() *record {
		if len(block) == 0 {
			block = make([]record, readChunk)
		}
		r := &block[0]
		block = block[1:]
		return r
	}
	add := func(r *record) bool {
		recs = append(recs, r)
		if !full && len(recs) == readChunk {
			var ok bool
			if recs, ok = g.queueLocked(p, recs); !ok {
				return false // the generation is ending
			}
			full = len(recs) > 0
		}
		return true
	}
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
		if readCommitted && txn && !skip {
			if handedTxn == nil {
				handedTxn = make(map[int64]bool)
			}
			handedTxn[pid] = true
		}
		for {
			r, err := b.ReadRecord()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return recs, offset, err
			}
			off := r.Offset
			var key, value []byte
			if control {
				// An abort marker ends the producer's aborted transaction:
				// its later batches are not skipped for it.
				k, _ := protocol.ReadAll(r.Key)
				if len(k) == 4 && k[2] == 0 && k[3] == 0 { // version int16, type int16 0 = abort
					delete(abortedPIDs, pid)
					if handedTxn[pid] {
						// The broker's list did not name this aborted
						// transaction although its records were in the
						// response: they were handed out. Nothing here can
						// take them back; say so loudly.
						s.log.Error("kafka: the broker's fetch response did not list an aborted transaction whose records it returned; they were handed out although read-committed",
							"partition", p.id, "producer_id", pid, "abort_marker_offset", r.Offset)
					}
				}
				delete(handedTxn, pid)
			} else if !skip && off >= offset {
				key, value, err = readKeyValue(r.Key, r.Value)
			}
			closeBytes(r.Key)
			closeBytes(r.Value)
			if err != nil {
				return recs, offset, err
			}
			if off < offset {
				continue // a batch can start before the offset asked for
			}
			offset = off + 1
			rec := slot()
			rec.g, rec.p, rec.attempt, rec.epoch, rec.skip = g, p, 1, p.epoch, skip
			m := &rec.m
			m.Topic, m.Partition, m.Offset, m.HighWaterMark = cfg.Topic, p.id, off, rp.HighWatermark
			if !skip {
				rec.id = recordID(p.idPrefix, off)
				m.Key, m.Value, m.Time = key, value, r.Time
				if len(r.Headers) > 0 {
					m.Headers = append([]kafkago.Header(nil), r.Headers...)
				}
				if byKey {
					rec.lane = maphash.Bytes(s.seed, key)
				}
			}
			if !add(rec) {
				return recs, offset, nil
			}
		}
	}
	return recs, offset, nil
}

// readKeyValue reads a record's key and value (nil when absent) into one
// allocation: the key is a full slice of its start (an append to it cannot
// write into the value), the value the rest.
func readKeyValue(k, v protocol.Bytes) (key, value []byte, err error) {
	kl, vl := 0, 0
	if k != nil {
		kl = k.Len()
	}
	if v != nil {
		vl = v.Len()
	}
	buf := make([]byte, kl+vl)
	if k != nil {
		key = buf[:kl:kl]
		if _, err = io.ReadFull(k, key); err != nil {
			return nil, nil, err
		}
	}
	if v != nil {
		value = buf[kl:]
		if _, err = io.ReadFull(v, value); err != nil {
			return nil, nil, err
		}
	}
	return key, value, nil
}

func closeBytes(b protocol.Bytes) {
	if b != nil {
		b.Close()
	}
}

// readChunk is how many records read queues at a time while it reads a
// response.
const readChunk = 64

// fetchMetadataTTL is how long the fetch transport trusts its view of the
// partitions' leaders when nothing says it is stale: a fetch routed to a
// broker that stopped leading the partition makes the fetcher drop the view
// at once (followLeader).
const fetchMetadataTTL = time.Second

// followLeader makes the fetch transport read the cluster's layout before
// its next request (see layoutDropper), after a fetch or offsets read sent
// at sent failed with a staleLeader error: the fetcher would otherwise ask
// the old leader again, backing off, until the transport's periodic
// refresh (within fetchMetadataTTL), and longer when its backoff had grown
// meanwhile. The fetchers of a generation share the transport and its
// dropper.
func (g *generation) followLeader(sent time.Time) {
	g.layout.drop(sent)
}

// resetBeyondEnd picks where to fetch a partition whose committed or next
// offset lies beyond its end: the first or last offset, by StartOffset. The
// offset tracker starts over when nothing is pending in it, so that the
// records below the stale offset are tracked (and committed) again.
//
// The partition starts a new epoch with a new offset tracker: the new log's
// offsets are at or below the old ones, which the old tracker would refuse
// as duplicates (and commit past). Records of the old log waiting for
// Receive are dropped (they no longer exist in the log); those still out
// (being handled, or waiting for a delayed requeue) are fenced: settling
// them returns broker.ErrStaleDelivery and only frees their lane, which
// new records of the same lane wait for, so a lane still has one record out
// at a time.
func (g *generation) resetBeyondEnd(p *partition, offset, first, last int64) int64 {
	s := g.s
	to := first
	if s.cfg.StartOffset == kafkago.LastOffset {
		to = last
	}
	s.mu.Lock()
	p.epoch++
	p.trk = offsets.Tracker{}
	// Every record of the old log that is not out is forgotten
	// (forgetLocked): first the heads waiting for Receive, whose lanes end
	// with the records queued behind them, then the records queued behind
	// heads that are out.
	dropped := 0
	s.ready.keep(func(r *record) bool {
		if r.p == p {
			dropped += s.forgetLocked(r, true)
			return false
		}
		return true
	})
	for _, ln := range p.lanes {
		for _, r := range ln.q {
			dropped += s.forgetLocked(r, false)
		}
		clear(ln.q)
		ln.q = nil
	}
	// What is left is one lane per record still out (being handled, or
	// waiting for a delayed requeue): fenced, each freeing its lane when
	// settled.
	fenced := len(p.lanes)
	s.mu.Unlock()
	s.log.Error("kafka: offset beyond the end of the partition (log truncated or topic recreated); starting over",
		"partition", p.id, "offset", offset, "first", first, "last", last, "restart_at", to,
		"dropped_unstarted", dropped, "fenced_in_flight", fenced)
	return to
}
