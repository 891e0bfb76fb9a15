package consumer

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/errtree"
)

// A BatchHandler processes several messages in one call: one bulk insert
// for a few hundred rows instead of a round trip per message. A batch
// consumer (NewBatch) calls it.
//
// HandleBatch returns nil when every message was handled: the runtime then
// acknowledges them all. To fail single messages and have the rest
// acknowledged, return BatchFailures (a *BatchError): each failed message is
// settled alone, as a Handler's failed message is (requeued within the
// delivery budget, dead-lettered at once when permanent or when the budget
// is spent, given back unspent when it wraps ErrNotHandled after its intake
// stopped). Any other error fails every message of the batch, and so does a
// panic (recovered, logged with its stack). BatchError says how the runtime
// finds BatchErrors in a wrapped or joined error.
//
// On a source whose deliveries come in ordered lanes (broker.Sequenced:
// Kafka's partitions, or keys under kafka.ByKey), the messages of a lane
// after a failed one in the same batch are given back unhandled (no
// attempt spent) instead of acknowledged, whatever the handler said of them:
// they come again after the failed one, so a lane is never handled out of
// order. Messages of other lanes are settled by their own outcome.
//
// msgs holds between 1 and Batch.MaxSize messages, in the order they were
// received. The slice is the handler's own copy: it may sort, reorder, nil
// or overwrite its entries, and the runtime still settles (and checks the
// delivery budget of) each message it received. The failure indexes of a
// BatchError refer to msgs as the handler left it when it returned: after
// a sort, index i is the message then at msgs[i] (the runtime finds it by
// pointer). When msgs no longer holds each message of the batch exactly
// once (an entry set to nil, to a copy or to another message, or a message
// twice), the indexes cannot be mapped and a BatchError fails the whole
// batch (logged, saying why); nil and other errors are not affected. The
// slice is reused for the next batch: do not keep it after HandleBatch
// returns (the messages themselves may be kept). ctx is as a
// Handler's (see Handler): it is cancelled with cause ErrDrainTimeout at the
// drain deadline, with ErrConsumerClosed on Close, and with
// broker.ErrStaleDelivery when the source fences one of the batch's
// deliveries (a Kafka rebalance); a fenced delivery is redelivered whatever
// the outcome. IntakeStopped works in it as in a Handler's.
type BatchHandler interface {
	HandleBatch(ctx context.Context, msgs []*broker.Message) error
}

// BatchHandlerFunc adapts an ordinary function to a BatchHandler.
type BatchHandlerFunc func(ctx context.Context, msgs []*broker.Message) error

// HandleBatch calls f(ctx, msgs).
func (f BatchHandlerFunc) HandleBatch(ctx context.Context, msgs []*broker.Message) error {
	return f(ctx, msgs)
}

// Batch says how a batch consumer (NewBatch) forms its batches.
type Batch struct {
	// MaxSize is the most messages a batch holds: 1 to 65,536 (a batch is
	// held in memory, MaxSize × concurrency messages at most). A Kafka
	// source hands out batches of up to 65,536 records too.
	MaxSize int
	// MaxWait is how long a batch may wait for more messages once its first
	// one arrived (0 or more): the handler gets MaxSize messages, or what
	// arrived within MaxWait of the first. With 0 nothing is waited for:
	// the batch holds what the source hands over at once, which is all it
	// has ready for a broker.BatchReceiver (Kafka) and one message for
	// other sources.
	MaxWait time.Duration
}

// maxBatchSize bounds Batch.MaxSize (see there); broker/kafka's ReceiveBatch
// has the same cap.
const maxBatchSize = 1 << 16

func (b Batch) validate() error {
	switch {
	case b.MaxSize < 1 || b.MaxSize > maxBatchSize:
		return fmt.Errorf("%w: batch max size %d, want 1 to %d", broker.ErrInvalidConfig, b.MaxSize, maxBatchSize)
	case b.MaxWait < 0:
		return fmt.Errorf("%w: batch max wait %v, want 0 or more", broker.ErrInvalidConfig, b.MaxWait)
	}
	return nil
}

// NewBatch returns a Consumer that hands deliveries from src to h in batches
// of up to b.MaxSize messages: each worker (WithConcurrency) collects a
// batch, runs h on it and settles its messages by their outcomes (see
// BatchHandler). Everything else is as for a Consumer made with New: Run,
// Shutdown, Close, Pause, Resume, a Supervisor, health, events, Stats
// (which count messages, not batches), WithKillSwitch (fed with each
// message's outcome; while it probes, a batch holds one message, so that a
// failed probe spends one attempt of one message, as with a Handler) and
// WithAdaptiveConcurrency (which limits how many batches run at once, from
// each batch's latency).
//
// Memory is bounded by b.MaxSize × concurrency messages held by the
// workers, plus what the source prefetches. A source fills batches only
// with what it has handed over: give a RabbitMQ or memory source a prefetch
// of at least b.MaxSize × concurrency, or batches stay smaller (a batch then
// holds what arrived within b.MaxWait). A Kafka source (a
// broker.BatchReceiver) collects a batch itself, as runs of consecutive
// records of a partition (or key) that go on growing while the batch waits:
// its MaxInFlight bounds how many records of one partition a batch can
// hold.
//
// Drain and pause: a batch whose collection is cut short by the intake
// stopping (Pause, the kill switch, the drain) is given back whole, unhandled
// and with no attempt spent, like any delivery received but not started. A
// batch whose handler runs finishes and is settled; at the drain deadline
// its context is cancelled and all its messages are given back to be
// redelivered, whatever the handler returns.
//
// It returns an error wrapping ErrInvalidConfig when src or h is nil, b is
// out of range (see Batch), an option is, or WithMiddleware is given
// (middleware wraps a per-message Handler; wrap a BatchHandler in a type of
// your own).
func NewBatch(src broker.Source, h BatchHandler, b Batch, opts ...Option) (*Consumer, error) {
	switch {
	case isNil(src):
		return nil, fmt.Errorf("%w: nil source", broker.ErrInvalidConfig)
	case isNil(h):
		return nil, fmt.Errorf("%w: nil batch handler", broker.ErrInvalidConfig)
	}
	if err := b.validate(); err != nil {
		return nil, err
	}
	return newConsumer(src, nil, &batchMode{h: h, cfg: b}, opts)
}

// batchMode is a batch consumer's handler and batch settings.
type batchMode struct {
	h   BatchHandler
	cfg Batch
}

// BatchError is what a BatchHandler returns to fail some messages of its
// batch and have the rest acknowledged (see BatchHandler). Make one with
// BatchFailures.
//
// It may be wrapped and joined: the runtime walks the handler's error
// through Unwrap() error and Unwrap() []error (fmt.Errorf's %w,
// errors.Join) down to the BatchErrors, whose own Unwrap it does not
// follow. The failures of every BatchError found count (where two fail the
// same message, the first found, depth first, gives its error). When the
// walk meets any other failure — an error that is neither a BatchError nor
// wraps one, such as errors.Join(BatchFailures(rows), errCommit) — that
// failure concerns the whole batch, and every message fails with the
// handler's error. A wrapper's meaning is not looked at: a BatchError
// wrapped in retry.Permanent fails its messages with their own errors.
type BatchError struct {
	// Failed maps the index of a message in the handler's msgs, as the
	// handler left it (see BatchHandler), to its error. An index outside
	// the batch fails the whole batch (the runtime cannot tell which
	// message was meant), and so does a BatchError that names no failed
	// message (return nil when all were handled); next to failed ones, a
	// nil error means the message was handled.
	Failed map[int]error
}

// BatchFailures returns a *BatchError for the messages of a batch that
// failed, by their index in the handler's msgs, or nil when failed holds no
// error (every message was handled). It copies failed, dropping nil errors.
// Wrapped or joined with other BatchErrors, its failures still count;
// joined with any other error, the whole batch fails (see BatchError).
func BatchFailures(failed map[int]error) error {
	out := make(map[int]error, len(failed))
	for i, err := range failed {
		if err != nil {
			out[i] = err
		}
	}
	if len(out) == 0 {
		return nil
	}
	return &BatchError{Failed: out}
}

// indexes returns the indexes of the failed messages, in order.
func (e *BatchError) indexes() []int {
	idx := make([]int, 0, len(e.Failed))
	for i, err := range e.Failed {
		if err != nil {
			idx = append(idx, i)
		}
	}
	sort.Ints(idx)
	return idx
}

// Error lists the failed messages by index, with their errors.
func (e *BatchError) Error() string {
	idx := e.indexes()
	var b strings.Builder
	fmt.Fprintf(&b, "queuekit: %d message(s) of the batch failed", len(idx))
	for n, i := range idx {
		if n == 3 {
			fmt.Fprintf(&b, "; and %d more", len(idx)-n)
			break
		}
		fmt.Fprintf(&b, "; [%d]: %s", i, errorText(e.Failed[i]))
	}
	return b.String()
}

// Unwrap returns the errors of the failed messages, in index order, so that
// errors.Is and errors.As look into them.
func (e *BatchError) Unwrap() []error {
	idx := e.indexes()
	errs := make([]error, len(idx))
	for n, i := range idx {
		errs[n] = e.Failed[i]
	}
	return errs
}

// batchOutcomes returns in out the error of each of the batch's messages
// ms (the runtime's, in delivery order) for the batch handler's result err,
// given hs, the handler's msgs as it left them: nil for all when err is
// nil; per message when err is made of *BatchErrors (see batchErrors),
// whose indexes refer to hs; err for all otherwise (a plain error, a
// panic, a BatchError joined with another error). misuse is not nil when the
// handler's per-message verdict cannot be applied (an index outside the
// batch; hs no longer a permutation of ms, so that an index cannot be
// mapped to a message): every message then fails with misuse, which says
// why (for the log). The user's error methods may panic: batchErrors is
// guarded.
func batchOutcomes(err error, hs, ms []*broker.Message, out []error) (_ []error, misuse error) {
	clear(out)
	if err == nil {
		return out, nil
	}
	bes := batchErrors(err)
	if bes == nil {
		return fill(out, err), nil
	}
	n := len(out)
	for _, be := range bes {
		for i, e := range be.Failed {
			if e != nil && (i < 0 || i >= n) {
				misuse = fmt.Errorf("queuekit: the batch handler failed message %d of a batch of %d; failing the whole batch: %w", i, n, err)
				return fill(out, misuse), misuse
			}
		}
	}
	// Where hs[i] is ms[k]: the identity unless the handler reordered.
	var pos []int
	if !slices.Equal(hs, ms) {
		var why string
		pos, why = permutation(hs, ms)
		if pos == nil {
			misuse = fmt.Errorf("queuekit: the batch handler %s, so its failure indexes cannot be mapped to messages; failing the whole batch: %w", why, err)
			return fill(out, misuse), misuse
		}
	}
	// Failures in index order, so that of two BatchErrors failing one
	// message the first in the tree's walk has its say.
	for _, be := range bes {
		for _, i := range be.indexes() {
			k := i
			if pos != nil {
				k = pos[i]
			}
			if out[k] == nil {
				out[k] = be.Failed[i]
			}
		}
	}
	return out, nil
}

// permutation returns pos, where hs[i] is ms[pos[i]], when hs holds each
// message of ms exactly once (compared by pointer); otherwise nil, and why
// not.
func permutation(hs, ms []*broker.Message) (pos []int, why string) {
	at := make(map[*broker.Message]int, len(ms))
	for k, m := range ms {
		at[m] = k
	}
	pos = make([]int, len(hs))
	seen := make([]bool, len(ms))
	for i, h := range hs {
		k, ok := at[h]
		switch {
		case h == nil:
			return nil, fmt.Sprintf("set msgs[%d] to nil", i)
		case !ok:
			return nil, fmt.Sprintf("put in msgs[%d] a message not of the batch", i)
		case seen[k]:
			return nil, fmt.Sprintf("put message %q in msgs twice (msgs[%d])", ms[k].ID, i)
		}
		seen[k] = true
		pos[i] = k
	}
	return pos, ""
}

// fill sets every error of out to err.
func fill(out []error, err error) []error {
	for i := range out {
		out[i] = err
	}
	return out
}

// batchErrors returns the *BatchErrors of the batch handler's result err
// (not nil), found by walking its tree through Unwrap() error and
// Unwrap() []error, in depth-first order; nil when err fails the whole
// batch: when the tree holds a failure that is neither a BatchError nor a
// wrapper of failures (a leaf error other than a BatchError, a wrapper
// whose Unwrap returns nothing), a BatchError that names no failure (a typed
// nil included), or when walking it failed (a panicking Unwrap, more than
// maxErrorTree errors: a cycle). A BatchError's own Unwrap (its messages'
// errors) is not walked.
func batchErrors(err error) (bes []*BatchError) {
	defer func() {
		if recover() != nil {
			bes = nil
		}
	}()
	nodes := 0
	var walk func(err error) bool
	walk = func(err error) bool {
		if nodes++; nodes > maxErrorTree {
			return false
		}
		switch e := err.(type) {
		case *BatchError:
			if e == nil || !e.failsAny() {
				return false
			}
			bes = append(bes, e)
			return true
		case interface{ Unwrap() error }:
			inner := e.Unwrap()
			return inner != nil && walk(inner)
		case interface{ Unwrap() []error }:
			found := false
			for _, inner := range e.Unwrap() {
				if inner == nil {
					continue
				}
				if !walk(inner) {
					return false
				}
				found = true
			}
			return found
		}
		return false
	}
	if !walk(err) {
		return nil
	}
	return bes
}

// maxErrorTree bounds the errors batchErrors looks at: an Unwrap cycle
// would walk for ever. It is the bound of the runtime's other walks
// (handlerResult).
const maxErrorTree = errtree.MaxNodes

// failsAny reports whether e names a failed message.
func (e *BatchError) failsAny() bool {
	for _, err := range e.Failed {
		if err != nil {
			return true
		}
	}
	return false
}

// hasMiddleware reports whether mw holds a middleware that is not nil.
func hasMiddleware(mw []Middleware) bool {
	for _, m := range mw {
		if m != nil {
			return true
		}
	}
	return false
}
