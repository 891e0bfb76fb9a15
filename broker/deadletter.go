package broker

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Headers written by a redrive (see DeadLetters.Redrive).
const (
	// HeaderRedriven holds how many times the message was sent back from
	// a dead-letter destination to its source. A redrive refuses a dead
	// letter whose count reached RedriveOptions.MaxRedrives, so that a
	// poison message cannot loop between its source and its dead letters
	// for ever.
	HeaderRedriven = "x-queuekit-redriven"
	// HeaderRedrivenAt holds the RFC 3339 time of the last redrive.
	HeaderRedrivenAt = "x-queuekit-redriven-at"
	// HeaderRedrivenFrom holds the id the message had as a dead letter
	// (DeadLetter.ID) when it was last redriven.
	HeaderRedrivenFrom = "x-queuekit-redriven-from"
)

// DefaultMaxRedrives is the redrive limit when RedriveOptions.MaxRedrives is
// zero: a message is sent back from its dead letters at most this many times.
const DefaultMaxRedrives = 3

// DefaultBodyPreview is how many bytes of a dead letter's body List returns
// when DeadLetterQuery.BodyLimit is zero.
const DefaultBodyPreview = 1024

// DefaultListLimit and MaxListLimit bound one page of List.
const (
	DefaultListLimit = 100
	MaxListLimit     = 10000
)

// Errors of the dead-letter operations. Adapters wrap them, so test with
// errors.Is.
var (
	// ErrDeadLetterNotFound: an id given to Redrive or Purge (or as a List
	// cursor) is not a dead letter there (any more). The ids that were
	// found were still handled; the result names the missing ones.
	ErrDeadLetterNotFound = errors.New("dead letter not found")
	// ErrRedriveLimit: a dead letter was redriven MaxRedrives times
	// already. It stays where it is.
	ErrRedriveLimit = errors.New("redrive limit reached")
	// ErrNoSource: a dead letter does not say where it came from (it has no
	// HeaderSource: it was written by something other than queuekit), or
	// its source does not exist any more, and no RedriveOptions.Destination
	// was given. It stays where it is.
	ErrNoSource = errors.New("dead letter has no source to redrive to")
	// ErrEmptySelection: Redrive or Purge was given a selection that
	// selects nothing by intent (no ids, no filter, All false). Selecting
	// every dead letter takes All: true, so that a forgotten flag does not
	// purge a queue.
	ErrEmptySelection = errors.New("empty selection: give ids, a filter, or All")
)

// A DeadLetter is one message in a dead-letter destination, as
// DeadLetters.List shows it.
type DeadLetter struct {
	// ID identifies the dead letter in its destination, for Redrive and
	// Purge: "<partition>:<offset>" on Kafka, the id the adapter gave it
	// when it dead-lettered it on RabbitMQ and the memory broker. Adapters
	// document how they name dead letters written by someone else.
	ID string `json:"id"`
	// Message is the dead letter: its headers (with the reason, see
	// HeaderError and friends), key and body. Body is cut to the query's
	// BodyLimit; BodySize is its whole length.
	Message Message `json:"message"`
	// BodySize is the length of the whole body, which Message.Body may
	// hold only the start of.
	BodySize int `json:"body_size"`
	// Reason is read from the reason headers. HasReason is false when the
	// dead letter has none of them (it was written by something other than
	// queuekit); Reason is then zero.
	Reason    Reason `json:"reason"`
	HasReason bool   `json:"has_reason"`
	// Partition and Offset are where the failed message was consumed from,
	// when the source has positions (Kafka); -1 otherwise.
	Partition int   `json:"partition"`
	Offset    int64 `json:"offset"`
	// Redriven is how many times the message was redriven before it was
	// dead-lettered again (HeaderRedriven).
	Redriven int `json:"redriven"`
}

// Age returns how long ago the message was dead-lettered (Reason.Time), or 0
// when it is not known.
func (d *DeadLetter) Age(now time.Time) time.Duration {
	if d.Reason.Time.IsZero() {
		return 0
	}
	return now.Sub(d.Reason.Time)
}

// DeadLetterFilter selects dead letters. Its fields combine with AND; a zero
// filter matches every dead letter.
type DeadLetterFilter struct {
	// IDs, when set, selects exactly these dead letters.
	IDs []string `json:"ids,omitempty"`
	// Reason, when set, selects dead letters whose error text contains it
	// (case-insensitive).
	Reason string `json:"reason,omitempty"`
	// Source, when set, selects dead letters that came from this queue or
	// topic.
	Source string `json:"source,omitempty"`
	// Before and After, when set, select dead letters dead-lettered before
	// or after these times. Dead letters without a time (HasReason false)
	// never match a time bound.
	Before time.Time `json:"before,omitzero"`
	After  time.Time `json:"after,omitzero"`
}

// IsZero reports whether the filter matches every dead letter.
func (f DeadLetterFilter) IsZero() bool {
	return len(f.IDs) == 0 && f.Reason == "" && f.Source == "" && f.Before.IsZero() && f.After.IsZero()
}

// Match reports whether d matches the filter. It looks through IDs one by
// one: to test many dead letters against a long list of ids, use Matcher.
func (f DeadLetterFilter) Match(d *DeadLetter) bool {
	if len(f.IDs) > 0 && !slices.Contains(f.IDs, d.ID) {
		return false
	}
	return f.matchRest(d)
}

// Matcher returns a function that reports whether a dead letter matches the
// filter, as Match does, with the ids in a set: it costs O(len(IDs)) once,
// then O(1) per dead letter for the ids. Adapters use it so that every
// broker filters alike.
func (f DeadLetterFilter) Matcher() func(*DeadLetter) bool {
	if len(f.IDs) == 0 {
		return f.matchRest
	}
	ids := make(map[string]struct{}, len(f.IDs))
	for _, id := range f.IDs {
		ids[id] = struct{}{}
	}
	return func(d *DeadLetter) bool {
		if _, ok := ids[d.ID]; !ok {
			return false
		}
		return f.matchRest(d)
	}
}

// matchRest is Match without the ids.
func (f DeadLetterFilter) matchRest(d *DeadLetter) bool {
	if f.Reason != "" && !containsFold(d.Reason.Err, f.Reason) {
		return false
	}
	if f.Source != "" && d.Reason.Source != f.Source {
		return false
	}
	if !f.Before.IsZero() && (d.Reason.Time.IsZero() || !d.Reason.Time.Before(f.Before)) {
		return false
	}
	if !f.After.IsZero() && (d.Reason.Time.IsZero() || !d.Reason.Time.After(f.After)) {
		return false
	}
	return true
}

func containsFold(s, sub string) bool {
	return strings.Contains(strings.ToLower(s), strings.ToLower(sub))
}

// DeadLetterQuery is one page of List.
type DeadLetterQuery struct {
	DeadLetterFilter
	// Limit is the most dead letters on the page: DefaultListLimit when
	// zero, at most MaxListLimit.
	Limit int `json:"limit,omitempty"`
	// Cursor continues a listing: the Next of the previous page. Empty
	// starts at the oldest dead letter.
	Cursor string `json:"cursor,omitempty"`
	// BodyLimit is how many bytes of each body to return: DefaultBodyPreview
	// when zero, the whole body when negative.
	BodyLimit int `json:"body_limit,omitempty"`
}

// Resolve checks q and fills in its defaults.
func (q *DeadLetterQuery) Resolve() error {
	switch {
	case q.Limit < 0:
		return fmt.Errorf("%w: dead-letter query: negative limit %d", ErrInvalidConfig, q.Limit)
	case q.Limit == 0:
		q.Limit = DefaultListLimit
	case q.Limit > MaxListLimit:
		return fmt.Errorf("%w: dead-letter query: limit %d over %d", ErrInvalidConfig, q.Limit, MaxListLimit)
	}
	if q.BodyLimit == 0 {
		q.BodyLimit = DefaultBodyPreview
	}
	return nil
}

// CutBody cuts d.Message.Body to limit bytes (whole when limit is negative)
// without splitting a UTF-8 sequence, and sets d.BodySize.
func CutBody(d *DeadLetter, limit int) {
	d.BodySize = len(d.Message.Body)
	if limit < 0 || len(d.Message.Body) <= limit {
		return
	}
	b := d.Message.Body
	// Step back to the start of the rune the cut falls in (at most
	// UTFMax-1 bytes); cut before it only when it is a whole, valid rune
	// that the limit would split. Bytes that are not UTF-8 are cut where
	// asked.
	cut := limit
	start := limit
	for i := 0; i < utf8.UTFMax-1 && start > 0 && !utf8.RuneStart(b[start]); i++ {
		start--
	}
	if r, size := utf8.DecodeRune(b[start:]); start < limit && r != utf8.RuneError && start+size > limit {
		cut = start
	}
	b = b[:cut:cut]
	d.Message.Body = b
}

// DeadLetterPage is one page of List.
type DeadLetterPage struct {
	// Items are the dead letters, oldest first (Kafka: by partition, then
	// offset).
	Items []DeadLetter `json:"items"`
	// Next is the cursor of the next page; empty when this page is the last.
	Next string `json:"next,omitempty"`
}

// DeadLetterSelection selects dead letters for Redrive and Purge.
type DeadLetterSelection struct {
	DeadLetterFilter
	// All must be true to select every dead letter with a zero filter.
	All bool `json:"all,omitempty"`
	// Max, when positive, stops after this many selected dead letters
	// (oldest first), counting those that were skipped.
	Max int `json:"max,omitempty"`
}

// Check returns an error wrapping ErrEmptySelection when s selects nothing
// by intent, or ErrInvalidConfig when Max is negative.
func (s DeadLetterSelection) Check() error {
	if s.Max < 0 {
		return fmt.Errorf("%w: dead-letter selection: negative max %d", ErrInvalidConfig, s.Max)
	}
	if s.IsZero() && !s.All {
		return fmt.Errorf("%w", ErrEmptySelection)
	}
	return nil
}

// RedriveOptions says how Redrive sends dead letters back.
type RedriveOptions struct {
	// MaxRedrives is the redrive limit: a dead letter whose HeaderRedriven
	// count reached it is skipped with ErrRedriveLimit. Zero means
	// DefaultMaxRedrives; negative means no limit.
	MaxRedrives int `json:"max_redrives,omitempty"`
	// Destination, when set, is where to send the selected dead letters
	// instead of their source (a queue or topic name).
	Destination string `json:"destination,omitempty"`
	// DryRun reports what would be redriven, and changes nothing.
	DryRun bool `json:"dry_run,omitempty"`
}

// Limit returns the effective redrive limit (negative: none).
func (o RedriveOptions) Limit() int {
	if o.MaxRedrives == 0 {
		return DefaultMaxRedrives
	}
	return o.MaxRedrives
}

// Skipped is a dead letter a Redrive or Purge selected but left where it
// was, and why.
type Skipped struct {
	ID  string `json:"id"`
	Err string `json:"error"`
	// err is the error itself, for errors.Is through Unwrap.
	err error
}

// NewSkipped returns a Skipped for id and err.
func NewSkipped(id string, err error) Skipped {
	return Skipped{ID: id, Err: err.Error(), err: err}
}

// Unwrap returns the error the dead letter was skipped for.
func (s Skipped) Unwrap() error { return s.err }

// Error implements error.
func (s Skipped) Error() string { return s.ID + ": " + s.Err }

// DeadLetterResult says what a Redrive or Purge did.
type DeadLetterResult struct {
	// Done are the ids that were redriven (sent to their source, confirmed
	// by the broker, and removed from the dead letters) or purged; with
	// DryRun, those that would be.
	Done []string `json:"done"`
	// Skipped were selected and left where they were.
	Skipped []Skipped `json:"skipped,omitempty"`
	// Missing are the ids of the filter that are not dead letters there.
	Missing []string `json:"missing,omitempty"`
	// DryRun is true when nothing was changed.
	DryRun bool `json:"dry_run,omitempty"`
}

// Err returns nil when every selected dead letter was handled, else an error
// that names the missing ids (wrapping ErrDeadLetterNotFound) and the
// skipped ones (wrapping their errors).
func (r DeadLetterResult) Err() error {
	var errs []error
	if len(r.Missing) > 0 {
		errs = append(errs, fmt.Errorf("%w: %s", ErrDeadLetterNotFound, strings.Join(quoteAll(r.Missing, 10), ", ")))
	}
	for i, s := range r.Skipped {
		if i == 10 {
			errs = append(errs, fmt.Errorf("and %d more skipped", len(r.Skipped)-10))
			break
		}
		errs = append(errs, s)
	}
	return errors.Join(errs...)
}

func quoteAll(ids []string, max int) []string {
	out := make([]string, 0, min(len(ids), max)+1)
	for i, id := range ids {
		if i == max {
			out = append(out, fmt.Sprintf("and %d more", len(ids)-max))
			break
		}
		out = append(out, strconv.Quote(id))
	}
	return out
}

// DeadLetters is the dead-letter destination of one source: a queue's
// dead-letter queue, a topic's dead-letter topic. It lets an operator see why
// messages failed, send them back for another try, or delete them.
//
// Every method is bounded by ctx and safe for concurrent use; two Redrive or
// Purge calls on the same dead letters at once may both handle one of them
// (at-least-once), never lose one.
type DeadLetters interface {
	// List returns a page of dead letters without consuming them: their
	// count and order are the same after List as before.
	List(ctx context.Context, q DeadLetterQuery) (DeadLetterPage, error)
	// Count returns how many dead letters match f.
	Count(ctx context.Context, f DeadLetterFilter) (int, error)
	// Redrive sends the selected dead letters back to their source (the
	// queue or topic these dead letters belong to) or to opts.Destination,
	// for another try. Headers do not choose where a redrive writes (anyone
	// who can write to the dead letters can write headers): a dead letter
	// whose reason names another source, or none, is skipped with
	// ErrNoSource unless opts.Destination is given. A Destination that does
	// not exist, or that is the dead-letter destination itself or a name
	// the adapter keeps for its own bookkeeping, is refused with an error
	// wrapping ErrNoSource or ErrInvalidConfig before anything is sent.
	// A redriven copy has the attempt count reset, the reason headers
	// removed and HeaderRedriven incremented. Each copy is confirmed by the broker before its dead letter is
	// removed, so a crash in between may redeliver a message twice but
	// never loses it. It returns what it did; its error is the result's
	// Err, or the error that stopped it (the result then says what was
	// done before).
	Redrive(ctx context.Context, sel DeadLetterSelection, opts RedriveOptions) (DeadLetterResult, error)
	// Purge deletes the selected dead letters for good.
	Purge(ctx context.Context, sel DeadLetterSelection, dryRun bool) (DeadLetterResult, error)
}

// A DeadLetterSource is a Source whose dead letters can be browsed,
// redriven and purged (see DeadLetters).
type DeadLetterSource interface {
	DeadLetters() DeadLetters
}

// ParseReason reads a Reason from dead-letter headers (HeaderError and
// friends). ok is false when h has none of them.
func ParseReason(h map[string]string) (r Reason, ok bool) {
	if h == nil {
		return Reason{}, false
	}
	found := false
	for _, k := range [...]string{HeaderError, HeaderSource, HeaderAttempts, HeaderPermanent, HeaderFailedAt} {
		if _, ok := h[k]; ok {
			found = true
			break
		}
	}
	if !found {
		return Reason{}, false
	}
	r.Err = h[HeaderError]
	r.Source = h[HeaderSource]
	r.Attempts, _ = strconv.Atoi(h[HeaderAttempts])
	r.Permanent, _ = strconv.ParseBool(h[HeaderPermanent])
	if t, err := time.Parse(time.RFC3339Nano, h[HeaderFailedAt]); err == nil {
		r.Time = t
	}
	return r, true
}

// RedriveHeader returns the headers of a redriven copy of a dead letter with
// headers h and id: h without the reason headers (the next failure writes
// its own) and with HeaderRedriven incremented, HeaderRedrivenAt = now and
// HeaderRedrivenFrom = id. h is not modified. Adapters also drop their own
// attempt counters, so the copy starts a fresh delivery budget.
func RedriveHeader(h map[string]string, id string, now time.Time) map[string]string {
	out := make(map[string]string, len(h)+3)
	for k, v := range h {
		switch k {
		case HeaderError, HeaderAttempts, HeaderSource, HeaderPermanent, HeaderFailedAt:
			continue
		}
		out[k] = v
	}
	n := Redriven(h)
	if n < math.MaxInt {
		n++ // a count at the largest int stays there: it is over any limit
	}
	out[HeaderRedriven] = strconv.Itoa(n)
	out[HeaderRedrivenAt] = now.UTC().Format(time.RFC3339Nano)
	out[HeaderRedrivenFrom] = id
	return out
}

// Redriven returns the HeaderRedriven count of h: 0 when absent, empty,
// negative or not a number, and the largest int when it is a number too
// large for one (so that a count past any limit stays past it).
func Redriven(h map[string]string) int {
	v := h[HeaderRedriven]
	n, err := strconv.Atoi(v)
	switch {
	case err != nil && errors.Is(err, strconv.ErrRange) && !strings.HasPrefix(v, "-"):
		return math.MaxInt
	case err != nil || n < 0:
		return 0
	}
	return n
}
