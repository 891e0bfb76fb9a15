package rabbitmq

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
)

// ErrMessageTooLarge is wrapped (together with broker.ErrInvalidConfig) by
// the error of a Publish whose message cannot be sent: its properties and
// headers do not fit in one AMQP frame of the size the broker negotiated
// (frame_max, 131072 bytes by default) with the reserve the Publisher
// keeps for the headers added later (see the package doc), or there are
// more headers than a reader takes. RabbitMQ closes the whole
// connection on such a frame (501 FRAME_ERROR), so the Publisher refuses
// the message before it writes anything; the body is not limited by this
// (it is split over as many frames as it needs).
var ErrMessageTooLarge = errors.New("rabbitmq: message headers larger than the broker's frame size")

// maxShortstr is the longest AMQP short string: exchange names, routing
// keys, header names and the string properties (message-id, content-type…).
const maxShortstr = 255

// maxContainerElements and maxFieldDepth are the limits of amqp091's
// reader (its read.go): it refuses a field table or array of more than
// 8192 elements, or nested deeper than 32 (the headers table is depth 0),
// with a syntax error, and closes the whole connection (502). A Source
// cannot even see such a message, let alone settle it: it would be
// delivered again and again, so the Publisher refuses to send one.
const (
	maxContainerElements = 8192
	maxFieldDepth        = 32
)

// headerEntriesReserve is how many of the maxContainerElements entries of
// the headers table a publish leaves for the headers the broker (x-death,
// x-first-death-*, x-last-death-*, x-delivery-count) and the adapter
// (x-queuekit-deliveries, x-queuekit-routing-key, the publish sequence, the
// dead-letter headers) add later.
const headerEntriesReserve = 64

// maxHeaders is the most headers a message may have when published.
const maxHeaders = maxContainerElements - headerEntriesReserve

// frameOverhead is what a frame adds to its payload: type, channel, size
// and the frame-end octet. RabbitMQ refuses a frame whose payload is larger
// than frame_max minus this.
const frameOverhead = 8

// seqHeaderSize is what a mandatory publish adds to the headers (seqHeader
// with an int64 value), counted before the header is there.
const seqHeaderSize = 1 + len(seqHeader) + 1 + 8

// checkShortstr returns an error wrapping broker.ErrInvalidConfig when s
// does not fit in an AMQP short string. amqp091 would fail the frame half
// written and close the whole connection over it.
func checkShortstr(what, s string) error {
	if len(s) > maxShortstr {
		return fmt.Errorf("%w: rabbitmq: %s is %d bytes long; AMQP allows at most %d", broker.ErrInvalidConfig, what, len(s), maxShortstr)
	}
	return nil
}

// checkPublish checks what amqp091 cannot encode, or encodes into a frame
// RabbitMQ closes the connection over, apart from the frame size (see
// headerFrameSize): names over 255 bytes, header values of types AMQP has
// not. Its errors wrap broker.ErrInvalidConfig.
func checkPublish(exchange, key string, m *amqp.Publishing) error {
	if err := checkShortstr("exchange name", exchange); err != nil {
		return err
	}
	if err := checkShortstr("routing key", key); err != nil {
		return err
	}
	for _, p := range [...]struct{ name, v string }{
		{"content-type", m.ContentType}, {"content-encoding", m.ContentEncoding},
		{"correlation-id", m.CorrelationId}, {"reply-to", m.ReplyTo},
		{"expiration", m.Expiration}, {"message-id", m.MessageId}, {"type", m.Type},
		{"user-id", m.UserId}, {"app-id", m.AppId},
	} {
		if len(p.v) > maxShortstr { // the name is joined only then: no allocation per publish
			return checkShortstr("property "+p.name, p.v)
		}
	}
	if _, err := tableSize(m.Headers); err != nil {
		return fmt.Errorf("%w: rabbitmq: headers: %w", broker.ErrInvalidConfig, err)
	}
	return nil
}

// headerFrameSize returns the size of the content header frame amqp091
// writes for m (see its write.go): properties and headers, plus what a
// mandatory publish adds. m must have passed checkPublish.
func headerFrameSize(m *amqp.Publishing, mandatory bool) int {
	n := frameOverhead + 2 + 2 + 8 + 2 // class, weight, body size, property flags
	for _, s := range [...]string{m.ContentType, m.ContentEncoding, m.CorrelationId, m.ReplyTo,
		m.Expiration, m.MessageId, m.Type, m.UserId, m.AppId} {
		if s != "" {
			n += 1 + len(s)
		}
	}
	if len(m.Headers) > 0 || mandatory {
		t, _ := tableSize(m.Headers)
		n += t
		if mandatory {
			n += seqHeaderSize
		}
	}
	if m.DeliveryMode > 0 {
		n++
	}
	if m.Priority > 0 {
		n++
	}
	if !m.Timestamp.IsZero() {
		n += 8
	}
	return n
}

// headerCount is how many headers m is sent with.
func headerCount(m *amqp.Publishing, mandatory bool) int {
	n := len(m.Headers)
	if mandatory {
		n++
	}
	return n
}

// maxHeaderReserve is how much of each frame a publish leaves for the
// headers added after it: by the broker, x-death (one entry per queue and
// reason, about 900 bytes with 255-byte names; a round trip through a retry
// queue makes two), x-first-death-* and x-last-death-* (up to 1.6 KB),
// x-delivery-count; by a Source's copy, x-queuekit-deliveries and
// x-queuekit-routing-key (up to 290 bytes). A message published up to the
// frame size came back unreadable after one of those.
const maxHeaderReserve = 4096

// headerReserve is the reserve for frameMax: maxHeaderReserve, or a quarter
// of a smaller frame.
func headerReserve(frameMax int) int { return min(maxHeaderReserve, frameMax/4) }

// fits reports whether m's header frame fits frameMax (0: no limit) with
// headerReserve to spare, and its headers are few enough for a reader
// (maxHeaders).
func fits(m *amqp.Publishing, mandatory bool, frameMax int) bool {
	if headerCount(m, mandatory) > maxHeaders {
		return false
	}
	return frameMax <= 0 || headerFrameSize(m, mandatory) <= frameMax-headerReserve(frameMax)
}

// tooLarge is the error of a message that does not fit frameMax.
func tooLarge(m *amqp.Publishing, mandatory bool, frameMax int) error {
	if n := headerCount(m, mandatory); n > maxHeaders {
		return fmt.Errorf("%w: %w: it has %d headers; at most %d can be published (amqp091 reads at most %d, and the broker and the adapter add some); nothing was sent",
			broker.ErrInvalidConfig, ErrMessageTooLarge, n, maxHeaders, maxContainerElements)
	}
	return fmt.Errorf("%w: %w: its properties and headers take %d bytes; at most %d can be published (the broker's frame size is %d, and %d bytes are left for the headers the broker and the adapter add); nothing was sent",
		broker.ErrInvalidConfig, ErrMessageTooLarge, headerFrameSize(m, mandatory), frameMax-headerReserve(frameMax), frameMax, headerReserve(frameMax))
}

// tableSize is the encoded size of t as a field table (its length prefix
// included), as amqp091's writeTable writes it, or an error for what it
// cannot write.
func tableSize(t amqp.Table) (int, error) { return tableSizeDepth(t, 0) }

// tableSizeDepth is tableSize for a table nested depth deep (the headers
// table is depth 0); it refuses what amqp091 cannot read back (see
// maxContainerElements). The headers table's own count is checked by fits,
// which leaves room for the headers added later.
func tableSizeDepth(t amqp.Table, depth int) (int, error) {
	if depth > maxFieldDepth {
		return 0, fmt.Errorf("field tables and arrays nested more than %d deep: amqp091 cannot read them back", maxFieldDepth)
	}
	if depth > 0 && len(t) > maxContainerElements {
		return 0, fmt.Errorf("a field table of %d entries: amqp091 reads at most %d", len(t), maxContainerElements)
	}
	n := 4
	for k, v := range t {
		if len(k) > maxShortstr {
			return 0, fmt.Errorf("header name %.40q… is %d bytes long; AMQP allows at most %d", k, len(k), maxShortstr)
		}
		f, err := fieldSizeDepth(v, depth)
		if err != nil {
			return 0, fmt.Errorf("header %q: %w", k, err)
		}
		n += 1 + len(k) + f
	}
	return n, nil
}

// fieldSize is the encoded size of one field value (its type octet
// included), as amqp091's writeField writes it.
func fieldSize(v any) (int, error) { return fieldSizeDepth(v, 0) }

// fieldSizeDepth is fieldSize for a value of a container nested depth deep.
func fieldSizeDepth(v any, depth int) (int, error) {
	switch v := v.(type) {
	case bool, byte, int8:
		return 2, nil
	case int16, uint16:
		return 3, nil
	case int, int32, uint32, float32:
		return 5, nil
	case int64, float64, time.Time:
		return 9, nil
	case amqp.Decimal:
		return 6, nil
	case string:
		return 5 + len(v), nil
	case []byte:
		return 5 + len(v), nil
	case nil:
		return 1, nil
	case amqp.Table:
		n, err := tableSizeDepth(v, depth+1)
		return 1 + n, err
	case []any:
		if depth+1 > maxFieldDepth {
			return 0, fmt.Errorf("field tables and arrays nested more than %d deep: amqp091 cannot read them back", maxFieldDepth)
		}
		if len(v) > maxContainerElements {
			return 0, fmt.Errorf("an array of %d elements: amqp091 reads at most %d", len(v), maxContainerElements)
		}
		n := 5
		for _, e := range v {
			f, err := fieldSizeDepth(e, depth+1)
			if err != nil {
				return 0, err
			}
			n += f
		}
		return n, nil
	}
	return 0, fmt.Errorf("value of type %T: AMQP has no such field type", v)
}

// HeaderTrimmed is set on a dead letter that had to be cut to fit the
// broker's frame size: it lists what was cut, as "name (N bytes)" entries
// separated by ", " (the first few by name, then "N more headers (M
// bytes)"). The error text (broker.HeaderError) is cut first, then the
// message's own headers are left out, largest first.
const HeaderTrimmed = "x-queuekit-trimmed"

// minReasonBytes is how much of the error text a dead letter keeps before
// any other header is left out to make room.
const minReasonBytes = 1024

// ours are the headers a dead letter carries for queuekit; the others are
// the message's own, which fitDeadLetter may leave out.
var ours = map[string]bool{
	broker.HeaderError: true, broker.HeaderAttempts: true, broker.HeaderSource: true,
	broker.HeaderPermanent: true, broker.HeaderFailedAt: true, routingKeyHeader: true, HeaderTrimmed: true,
	HeaderDeadLetterID: true,
}

// fitDeadLetter cuts m, a dead letter, until its header frame fits
// frameMax, so that a dead letter is always publishable: first the error
// text (down to minReasonBytes), then the message's own headers of 256
// bytes or more, largest first, then the error text down to 256 bytes, then
// the other headers of the message's own, largest first, and last the rest
// of the error text. What was cut is listed in HeaderTrimmed (the first
// entries by name, then a count). It reports false when even that is not
// enough (properties alone larger than the frame: not possible with
// RabbitMQ's smallest frame_max, 4096, and 255-byte properties, but
// checked).
func fitDeadLetter(m *amqp.Publishing, mandatory bool, frameMax int) bool {
	if fits(m, mandatory, frameMax) {
		return true
	}
	if frameMax <= 0 {
		return fitDeadLetterWithin(m, mandatory, 0, 0)
	}
	// The reserve's limit (see fits) first; on a frame too small for it
	// (full properties on the smallest frame_max), the frame itself: a dead
	// letter with no room to spare is better than none.
	orig := *m
	if fitDeadLetterWithin(m, mandatory, frameMax, frameMax-headerReserve(frameMax)) {
		return true
	}
	*m = orig
	return fitDeadLetterWithin(m, mandatory, frameMax, frameMax)
}

// fitDeadLetterWithin is fitDeadLetter with the header frame cut to limit
// bytes.
func fitDeadLetterWithin(m *amqp.Publishing, mandatory bool, frameMax, limit int) bool {
	ok := func() bool {
		return headerCount(m, mandatory) <= maxHeaders && (frameMax <= 0 || headerFrameSize(m, mandatory) <= limit)
	}
	h := make(amqp.Table, len(m.Headers)+1)
	for k, v := range m.Headers {
		h[k] = v
	}
	m.Headers = h
	var rec trimRecord
	errText, _ := h[broker.HeaderError].(string)
	cutReason := func(floor int) {
		for !ok() {
			cur, _ := h[broker.HeaderError].(string)
			if len(cur) <= floor {
				return
			}
			excess := headerFrameSize(m, mandatory) - limit
			next := cutText(errText, max(len(cur)-excess-32, floor)) // 32: room for the record's entry
			if len(next) >= len(cur) {
				return
			}
			h[broker.HeaderError] = next
			rec.reason = len(errText)
			h[HeaderTrimmed] = rec.String()
		}
	}
	type entry struct {
		k    string
		size int
	}
	var own []entry
	for k, v := range h {
		if !ours[k] {
			f, _ := fieldSize(v)
			own = append(own, entry{k, 1 + len(k) + f})
		}
	}
	slices.SortFunc(own, func(a, b entry) int { return b.size - a.size })
	// dropOwn leaves out the largest remaining headers of at least
	// minSize bytes, in batches that free what is in excess (the size is
	// measured once per batch, not once per header: a dead letter may
	// have tens of thousands of headers).
	dropOwn := func(minSize int) {
		for !ok() && len(own) > 0 && own[0].size >= minSize {
			excess := headerFrameSize(m, mandatory) - limit
			// At least one, and enough to bring the count under
			// maxHeaders (HeaderTrimmed may be one more).
			count := max(headerCount(m, mandatory)+1-maxHeaders, 1)
			freed, dropped := 0, 0
			for (freed < excess+64 || dropped < count) && len(own) > 0 && own[0].size >= minSize { // 64: the record grows
				dropped++
				e := own[0]
				own = own[1:]
				delete(h, e.k)
				rec.add(e.k, e.size)
				freed += e.size
			}
			h[HeaderTrimmed] = rec.String()
		}
	}
	cutReason(minReasonBytes)
	dropOwn(256)
	cutReason(256)
	dropOwn(0)
	cutReason(0)
	return ok()
}

// trimRecord is what fitDeadLetter cut, for HeaderTrimmed. Its text is
// bounded: the first few headers by name (names cut to 64 bytes), then a
// count of the others.
type trimRecord struct {
	reason int // bytes of the error text before it was cut; 0: not cut
	names  []string
	more   int // headers left out past names
	bytes  int // their size
}

const trimRecordNames = 8

func (r *trimRecord) add(name string, size int) {
	if len(r.names) < trimRecordNames {
		if len(name) > 64 {
			name = name[:64] + "…"
		}
		r.names = append(r.names, fmt.Sprintf("%s (%d bytes)", name, size))
		return
	}
	r.more++
	r.bytes += size
}

func (r *trimRecord) String() string {
	var parts []string
	if r.reason > 0 {
		parts = append(parts, fmt.Sprintf("%s (%d bytes)", broker.HeaderError, r.reason))
	}
	parts = append(parts, r.names...)
	if r.more > 0 {
		parts = append(parts, fmt.Sprintf("%d more headers (%d bytes)", r.more, r.bytes))
	}
	return strings.Join(parts, ", ")
}

// cutText cuts s to at most n bytes at a UTF-8 boundary, saying how long it
// was.
func cutText(s string, n int) string {
	suffix := " … (cut to fit the broker's frame size: " + strconv.Itoa(len(s)) + " bytes in all)"
	cut := n - len(suffix)
	if cut <= 0 {
		return ""
	}
	// At most utf8.UTFMax-1 bytes back: a rune is no longer, and on invalid
	// UTF-8 (no rune start at all) stepping back further kept nothing.
	for back := 0; cut > 0 && back < utf8.UTFMax-1 && !utf8.RuneStart(s[cut]); back++ {
		cut--
	}
	return s[:cut] + suffix
}
