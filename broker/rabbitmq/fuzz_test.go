package rabbitmq

// Fuzz targets for what the adapter decodes from outside (issue 9 item 14):
// the attempt count from message headers (x-delivery-count, x-death,
// HeaderDeliveries), the headers of the copies the adapter publishes
// (requeue, dead letter: the consumer.Reason must read back as written), and
// the redaction of passwords from URLs and error texts.
//
// The seeds (f.Add and testdata/fuzz/) run as ordinary tests; fuzz with
//
//	go test -run '^$' -fuzz '^FuzzAttempt$' -fuzztime 5m -parallel 1 ./broker/rabbitmq

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/big"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	amqp "github.com/rabbitmq/amqp091-go"
)

// tableKeys are the header names the adapter reads or writes; the table
// encoding below refers to them by index so that the fuzzer finds them.
var tableKeys = []string{
	"x-delivery-count",
	"x-death",
	HeaderDeliveries,
	"count",
	routingKeyHeader,
	seqHeader,
	broker.HeaderAttempts,
	broker.HeaderError,
	"reason",
	"queue",
}

// A compact, total encoding of amqp.Table values, so that any byte string is
// a table and the fuzzer can reach every shape of x-death (arrays of tables,
// tables of arrays, counts of every integer type, wrong types). It produces
// exactly the Go types amqp091-go's frame reader produces.
//
//	table: count byte (mod 8), then count × (key, value)
//	key:   i < len(tableKeys) names tableKeys[i]; else a string follows
//	value: tag byte (mod 17), then its payload (big endian)
type tableReader struct{ b []byte }

func (r *tableReader) next(n int) []byte {
	out := make([]byte, n) // missing bytes read as zero
	copy(out, r.b)
	r.b = r.b[min(n, len(r.b)):]
	return out
}

func (r *tableReader) u8() byte       { return r.next(1)[0] }
func (r *tableReader) u16() uint16    { return binary.BigEndian.Uint16(r.next(2)) }
func (r *tableReader) u32() uint32    { return binary.BigEndian.Uint32(r.next(4)) }
func (r *tableReader) u64() uint64    { return binary.BigEndian.Uint64(r.next(8)) }
func (r *tableReader) str() string    { return string(r.next(int(r.u8()))) }
func (r *tableReader) strKey() string { return r.str() }

func (r *tableReader) table(depth int) amqp.Table {
	n := int(r.u8() % 8)
	t := make(amqp.Table, n)
	for range n {
		k := r.u8()
		key := ""
		if int(k) < len(tableKeys) {
			key = tableKeys[k]
		} else {
			key = r.strKey()
		}
		t[key] = r.value(depth)
	}
	return t
}

func (r *tableReader) value(depth int) any {
	switch r.u8() % 17 {
	case 0:
		return nil
	case 1:
		return r.u8()&1 == 1
	case 2:
		return int8(r.u8())
	case 3:
		return r.u8()
	case 4:
		return int16(r.u16())
	case 5:
		return r.u16()
	case 6:
		return int32(r.u32())
	case 7:
		return r.u32()
	case 8:
		return int64(r.u64())
	case 9:
		return math.Float32frombits(r.u32())
	case 10:
		return math.Float64frombits(r.u64())
	case 11:
		return amqp.Decimal{Scale: r.u8(), Value: int32(r.u32())}
	case 12:
		return r.str()
	case 13:
		return []byte(r.str())
	case 14:
		if depth <= 0 {
			return nil
		}
		n := int(r.u8() % 8)
		a := make([]any, n)
		for i := range a {
			a[i] = r.value(depth - 1)
		}
		return a
	case 15:
		if depth <= 0 {
			return nil
		}
		return r.table(depth - 1)
	default:
		return time.Unix(int64(r.u64()), 0)
	}
}

func decodeTable(b []byte) amqp.Table { return (&tableReader{b: b}).table(3) }

// encodeTable is the inverse of decodeTable, for readable seeds.
func encodeTable(t amqp.Table) []byte {
	var b []byte
	b = append(b, byte(len(t)))
	keys := make([]string, 0, len(t))
	for k := range t {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if i := slices.Index(tableKeys, k); i >= 0 {
			b = append(b, byte(i))
		} else {
			b = append(b, 0xff, byte(len(k)))
			b = append(b, k...)
		}
		b = encodeValue(b, t[k])
	}
	return b
}

func encodeValue(b []byte, v any) []byte {
	switch v := v.(type) {
	case nil:
		return append(b, 0)
	case bool:
		if v {
			return append(b, 1, 1)
		}
		return append(b, 1, 0)
	case int8:
		return append(b, 2, byte(v))
	case uint8:
		return append(b, 3, v)
	case int16:
		return binary.BigEndian.AppendUint16(append(b, 4), uint16(v))
	case uint16:
		return binary.BigEndian.AppendUint16(append(b, 5), v)
	case int32:
		return binary.BigEndian.AppendUint32(append(b, 6), uint32(v))
	case uint32:
		return binary.BigEndian.AppendUint32(append(b, 7), v)
	case int64:
		return binary.BigEndian.AppendUint64(append(b, 8), uint64(v))
	case float32:
		return binary.BigEndian.AppendUint32(append(b, 9), math.Float32bits(v))
	case float64:
		return binary.BigEndian.AppendUint64(append(b, 10), math.Float64bits(v))
	case amqp.Decimal:
		return binary.BigEndian.AppendUint32(append(b, 11, v.Scale), uint32(v.Value))
	case string:
		return append(append(b, 12, byte(len(v))), v...)
	case []byte:
		return append(append(b, 13, byte(len(v))), v...)
	case []any:
		b = append(b, 14, byte(len(v)))
		for _, e := range v {
			b = encodeValue(b, e)
		}
		return b
	case amqp.Table:
		return append(append(b, 15), encodeTable(v)...)
	case time.Time:
		return binary.BigEndian.AppendUint64(append(b, 16), uint64(v.Unix()))
	}
	panic(fmt.Sprintf("encodeValue: unsupported type %T", v))
}

// TestTableEncodingRoundTrips keeps the seeds of FuzzAttempt meaning what
// they say.
func TestTableEncodingRoundTrips(t *testing.T) {
	for _, tb := range attemptSeeds() {
		got := decodeTable(encodeTable(tb))
		if fmt.Sprint(got) != fmt.Sprint(tb) {
			t.Errorf("decodeTable(encodeTable(%v)) = %v", tb, got)
		}
	}
}

func xDeath(counts ...any) []any {
	out := make([]any, len(counts))
	for i, c := range counts {
		out[i] = amqp.Table{"count": c, "reason": "expired", "queue": "q.retry"}
	}
	return out
}

func attemptSeeds() []amqp.Table {
	return []amqp.Table{
		{},
		{"x-delivery-count": int64(0)},
		{"x-delivery-count": int64(4)},
		{"x-delivery-count": int32(2), HeaderDeliveries: int64(3)},
		{HeaderDeliveries: int64(1)},
		{HeaderDeliveries: int64(7), "x-death": xDeath(int64(5))},
		{"x-death": xDeath(int64(1))},
		{"x-death": xDeath(int64(2), int32(3))},
		{"x-death": xDeath(uint8(1), "2", nil)},
		{"x-death": amqp.Table{"count": int64(3)}}, // a table, not an array
		{"x-death": []any{"rejected", int64(3), []any{amqp.Table{"count": int64(1)}}}},
		{"x-death": xDeath(int64(1)), "x-delivery-count": int64(1), routingKeyHeader: "k", seqHeader: int64(9)},
		{HeaderDeliveries: "3"}, // a string: not a count
		{HeaderDeliveries: 3.0},
		{HeaderDeliveries: int64(-5)},
		{routingKeyHeader: []byte("k")},
		{broker.HeaderAttempts: "9", broker.HeaderError: "boom"},
	}
}

// refAttempt is the documented formula of Message.Attempt (doc.go,
// "Message.Attempt is computed from…"), in exact arithmetic: the deliveries
// before the last copy (HeaderDeliveries, or else the sum of the x-death
// counts) plus 1, plus the deliveries since (x-delivery-count, or 1 when
// the broker says redelivered). A negative count (forged: no broker sends
// one) counts as 0.
func refAttempt(h amqp.Table, redelivered bool) *big.Int {
	count := func(t amqp.Table, key string) (*big.Int, bool) {
		var n big.Int
		switch v := t[key].(type) {
		case int8, int16, int32, int64, int:
			n.SetInt64(max(reflectInt(v), 0))
		case uint8, uint16, uint32, uint64:
			n.SetUint64(reflectUint(v))
		default:
			return nil, false
		}
		return &n, true
	}
	prior, ok := count(h, HeaderDeliveries)
	if !ok {
		prior = new(big.Int)
		if deaths, ok := h["x-death"].([]any); ok {
			for _, e := range deaths {
				if t, ok := e.(amqp.Table); ok {
					if c, ok := count(t, "count"); ok {
						prior.Add(prior, c)
					}
				}
			}
		}
	}
	ref := new(big.Int).Add(prior, big.NewInt(1))
	if dc, ok := count(h, "x-delivery-count"); ok {
		ref.Add(ref, dc)
	} else if redelivered {
		ref.Add(ref, big.NewInt(1))
	}
	return ref
}

func reflectInt(v any) int64 {
	switch v := v.(type) {
	case int8:
		return int64(v)
	case int16:
		return int64(v)
	case int32:
		return int64(v)
	case int64:
		return v
	case int:
		return int64(v)
	}
	panic("not a signed integer")
}

func reflectUint(v any) uint64 {
	switch v := v.(type) {
	case uint8:
		return uint64(v)
	case uint16:
		return uint64(v)
	case uint32:
		return uint64(v)
	case uint64:
		return v
	}
	panic("not an unsigned integer")
}

// FuzzAttempt decodes Message.Attempt from headers of any shape. It must
// never panic, never be below 1 (Attempt is 1 on the first delivery), never
// wrap around on huge counts, and follow the documented formula otherwise.
// The copy the adapter publishes to requeue the message (copyWith) must be
// a valid AMQP table, keep the routing key, and count one more delivery
// when it comes back.
func FuzzAttempt(f *testing.F) {
	for _, h := range attemptSeeds() {
		f.Add(encodeTable(h), false)
		f.Add(encodeTable(h), true)
	}
	// Fuzz finding F1 (fixed in d5af025): counts near the int64 limits
	// wrapped Message.Attempt around to a negative number, and a negative
	// count made it 0 or less.
	f.Add(encodeTable(amqp.Table{HeaderDeliveries: int64(math.MaxInt64)}), false)
	f.Add(encodeTable(amqp.Table{"x-death": xDeath(int64(math.MaxInt64), int64(math.MaxInt64))}), false)
	f.Add(encodeTable(amqp.Table{"x-delivery-count": int8(-1)}), false)
	f.Add(encodeTable(amqp.Table{"x-delivery-count": int16(-18432)}), true)
	f.Add(encodeTable(amqp.Table{"x-death": xDeath(int64(5), int64(-3))}), false)
	f.Fuzz(func(t *testing.T, data []byte, redelivered bool) {
		h := decodeTable(data)
		d := amqp.Delivery{Headers: h, Redelivered: redelivered, RoutingKey: "rk", Body: []byte("b")}
		got := attempt(&d)
		if got < 1 {
			t.Fatalf("attempt(headers %v, redelivered %v) = %d; want >= 1", h, redelivered, got)
		}
		ref := refAttempt(h, redelivered)
		if ref.Cmp(big.NewInt(math.MaxInt32)) <= 0 {
			if int64(got) != ref.Int64() {
				t.Fatalf("attempt(headers %v, redelivered %v) = %d; want %v (the documented formula)", h, redelivered, got, ref)
			}
		} else if got < math.MaxInt32 {
			t.Fatalf("attempt(headers %v, redelivered %v) = %d; want >= %d: the count is %v, it must saturate, not wrap", h, redelivered, got, math.MaxInt32, ref)
		}

		// The message as handlers see it, and the copy a classic-queue
		// requeue publishes.
		msg := toMessage(&d, "q", nil)
		if msg.Attempt != got {
			t.Fatalf("toMessage(...).Attempt = %d; attempt() = %d", msg.Attempt, got)
		}
		for k := range msg.Header {
			if k == seqHeader || k == routingKeyHeader {
				t.Fatalf("toMessage(headers %v).Header has the adapter's own %q", h, k)
			}
		}
		dl := &delivery{d: d, msg: msg}
		pub := dl.copyWith(nil)
		if err := pub.Headers.Validate(); err != nil {
			t.Fatalf("copy of headers %v: Validate() = %v; the broker would refuse the requeue", h, err)
		}
		back := amqp.Delivery{Headers: pub.Headers, RoutingKey: "q", Body: pub.Body}
		if got < math.MaxInt32 {
			if a := attempt(&back); a != got+1 {
				t.Fatalf("attempt(copy of headers %v) = %d; want %d (one more than the original's)", h, a, got+1)
			}
		}
		if k := string(toMessage(&back, "q", nil).Key); k != string(msg.Key) {
			t.Fatalf("copy of headers %v has key %q; want the original's %q", h, k, msg.Key)
		}
	})
}

// FuzzDeadLetterHeaders checks that a dead letter's reason reads back as it
// was written, whatever the original headers held (a producer may have set
// x-queuekit-* headers of its own), and that the dead letter is a valid
// AMQP table without the delivery counter (it starts a fresh budget when
// moved back).
func FuzzDeadLetterHeaders(f *testing.F) {
	f.Add(encodeTable(amqp.Table{}), "boom", 3, "orders", false, int64(0))
	f.Add(encodeTable(amqp.Table{broker.HeaderError: int64(5), broker.HeaderAttempts: "x"}), "", 1, "", true, int64(1700000000))
	f.Add(encodeTable(amqp.Table{"x-death": xDeath(int64(2)), HeaderDeliveries: int64(4)}), "decode: invalid character '\\x00'", 0, "q", true, int64(-1))
	f.Add(encodeTable(amqp.Table{"x-delivery-count": int64(9)}), "\xff\xfe not utf-8", -7, "\x00", false, int64(math.MaxInt64))
	f.Fuzz(func(t *testing.T, data []byte, errText string, attempts int, source string, permanent bool, unix int64) {
		h := decodeTable(data)
		d := amqp.Delivery{Headers: h, RoutingKey: "rk"}
		msg := toMessage(&d, "q", nil)
		reason := broker.Reason{Err: errText, Attempts: attempts, Source: source, Permanent: permanent}
		if unix != 0 {
			reason.Time = time.Unix(unix%(1<<40), 0)
		}
		// As DeadLetter builds it.
		pub := (&delivery{d: d, msg: msg}).copyWith(reason.Header(nil))
		delete(pub.Headers, HeaderDeliveries)
		if err := pub.Headers.Validate(); err != nil {
			t.Fatalf("dead letter of headers %v: Validate() = %v", h, err)
		}
		back := toMessage(&amqp.Delivery{Headers: pub.Headers, RoutingKey: "q"}, "q.dlq", nil)
		for k, want := range reason.Header(nil) {
			if got := back.Header[k]; got != want {
				t.Fatalf("dead letter of headers %v with reason %+v: header %s = %q; want %q", h, reason, k, got, want)
			}
		}
		if n, err := strconv.Atoi(back.Header[broker.HeaderAttempts]); err != nil || n != attempts {
			t.Fatalf("dead letter: %s = %q; want %d", broker.HeaderAttempts, back.Header[broker.HeaderAttempts], attempts)
		}
		if p := back.Header[broker.HeaderPermanent]; p != strconv.FormatBool(permanent) {
			t.Fatalf("dead letter: %s = %q; want %v", broker.HeaderPermanent, p, permanent)
		}
		if _, ok := pub.Headers[HeaderDeliveries]; ok {
			t.Fatalf("dead letter keeps %s", HeaderDeliveries)
		}
		if string(back.Key) != string(msg.Key) {
			t.Fatalf("dead letter has key %q; want the original's %q", back.Key, msg.Key)
		}
	})
}

// A password with an unescaped "#" makes the URL parse without a password
// (host "u", port 12, fragment "34@host"): the constructor's error quoted it
// whole. Found by FuzzRedact.
func TestConstructorErrorsNeverShowAPasswordThatEndsTheAuthorityEarly(t *testing.T) {
	for _, raw := range []string{
		"http://u:12#34@host/",
		"http://u:1234/56@host/",
		"http://u:12?34@host/",
	} {
		_, err := NewSource(Config{Queue: "q", Dialer: Dialer{URL: raw}})
		if err == nil {
			t.Fatalf("NewSource with URL %q = nil error; want an error", raw)
		}
		pass := raw[strings.Index(raw, "u:")+2 : strings.LastIndex(raw, "@")]
		if strings.Contains(err.Error(), pass) {
			t.Errorf("NewSource with URL %q: error %q shows the password %q", raw, err, pass)
		}
	}
}

// mutatePassword returns p with every ASCII letter and digit replaced by
// another of its class (hex digits stay hex digits, so percent-escapes stay
// valid and the URL parses the same way). Text that shows in a redacted
// output for both p and its mutation does not come from the password.
func mutatePassword(p string) string {
	b := []byte(p)
	for i, c := range b {
		switch {
		case c >= '0' && c <= '9':
			b[i] = '0' + (c-'0'+1)%10
		case c >= 'a' && c <= 'f':
			b[i] = 'a' + (c-'a'+1)%6
		case c >= 'A' && c <= 'F':
			b[i] = 'A' + (c-'A'+1)%6
		case c >= 'g' && c <= 'z':
			b[i] = 'g' + (c-'g'+1)%20
		case c >= 'G' && c <= 'Z':
			b[i] = 'G' + (c-'G'+1)%20
		}
	}
	return string(b)
}

// passwordForms are the ways p can be spelled in a URL or an error text:
// as is, percent-encoded (path, query and userinfo rules), percent-decoded,
// and Go-quoted (url.Error quotes the URL with %q).
func passwordForms(p string) []string {
	forms := []string{p, url.PathEscape(p), url.QueryEscape(p)}
	if ui := url.UserPassword("", p).String(); len(ui) > 1 {
		forms = append(forms, ui[1:]) // after the ":"
	}
	if s, err := url.PathUnescape(p); err == nil {
		forms = append(forms, s)
	}
	if s, err := url.QueryUnescape(p); err == nil {
		forms = append(forms, s)
	}
	q := strconv.Quote(p)
	forms = append(forms, q[1:len(q)-1])
	q = strconv.QuoteToASCII(p)
	forms = append(forms, q[1:len(q)-1])
	slices.Sort(forms)
	return slices.Compact(forms)
}

// redactOutputs is every text the adapter derives from raw for logs and
// errors: the redacted URL, library error texts passed through redactText
// and RedactError, and the errors of Dialer's validation and dial (the real
// paths, with a dial function that fails at once).
func redactOutputs(raw string) []string {
	out := []string{RedactURL(raw)}
	texts := []string{
		"dial " + raw + ": connection refused",
		fmt.Sprintf("parse %q: invalid", raw),
		raw + " " + raw,
		"Exception (403) Reason: \"" + raw + "\"",
	}
	if _, err := url.Parse(raw); err != nil {
		texts = append(texts, err.Error())
	}
	if _, err := amqp.ParseURI(raw); err != nil {
		texts = append(texts, err.Error())
	}
	for _, s := range texts {
		out = append(out, redactText(s, raw), RedactError(errors.New(s), raw).Error())
	}
	d := Dialer{URL: raw, Dial: func(network, addr string) (net.Conn, error) {
		return nil, fmt.Errorf("dial %s %s: refused", network, addr)
	}}
	if err := d.validate(); err != nil {
		out = append(out, err.Error())
	} else if c, err := d.dial(context.Background(), raw, nil); err != nil {
		out = append(out, err.Error())
	} else {
		_ = c.Close()
	}
	// A cluster's dial that finds no node names every node it tried (the
	// same node twice is invalid, and the error says so; dialled anyway,
	// for the text of a dial to two nodes).
	dd := Dialer{URLs: []string{raw, raw}, Dial: d.Dial}
	if err := dd.validate(); err != nil {
		out = append(out, err.Error())
	}
	if d.validate() != nil {
		// Nothing to dial.
	} else if c, err := newConnection(dd).get(); err != nil {
		out = append(out, err.Error())
	} else {
		_ = c.Close()
	}
	return out
}

// FuzzRedact builds URLs with a password spelled in every way (as is,
// percent-encoded, with reserved characters, several "@", IPv6 hosts, any
// scheme, any tail) and checks that no form of the password survives in any
// text the adapter derives from the URL.
func FuzzRedact(f *testing.F) {
	for _, s := range []struct {
		scheme, user, pass, host, tail string
		enc                            uint8
	}{
		{"amqp", "guest", "hunter2", "127.0.0.1:5672", "/", 0},
		{"amqps", "user", "p@ssw0rd", "host", "/vh", 0},
		{"amqps", "user", "p@ssw0rd", "host", "/vh", 1},
		{"amqp", "u", "pa:ss/wo#rd?x", "[::1]:5672", "/%2f", 1},
		{"amqp", "u", "12#34", "host", "", 0},
		{"amqp", "u", "ab/cd", "host", "", 0},
		{"amqp", "u", "ab?cd", "host", "", 0},
		{"amqp", "u", "p w d", "host", "", 0},
		{"amqp", "u", "s3cr%45t", "host", "", 0},
		{"amqp", "u", "s3cr%zzt", "host", "", 0},
		{"amqp", "u@x", "pass@word", "h@st", "/v?heartbeat=10", 0},
		{"amqp", "", "secret", "[fe80::1%25eth0]:5672", "/", 0},
		{"amqp", "u", "secret", "[::1", "/", 0},
		{"http", "u", "topsecret", "host", "", 0},
		{"", "u", "nosc1eme", "host", "", 0},
		{"amqp", "u", "ümläut€", "höst", "", 0},
		{"amqp", "u", "tab\tnl\nquote\"", "host", "", 0},
		{"amqp", "u", "secret", "host:99999999999", "", 0},
		{"amqp", "u", "9999", "host", "?channel_max=x", 2},
		{"amqp", "u", "a%2Fb%40c", "host", "", 3},
	} {
		f.Add(s.scheme, s.user, s.pass, s.host, s.tail, s.enc)
	}
	f.Fuzz(func(t *testing.T, scheme, user, pass, host, tail string, enc uint8) {
		if len(pass) < 4 {
			t.Skip()
		}
		build := func(p string) string {
			var ui string
			switch enc % 4 {
			case 0:
				ui = user + ":" + p
			case 1:
				ui = url.UserPassword(user, p).String()
			case 2:
				ui = user + ":" + url.QueryEscape(p)
			case 3:
				ui = user + ":" + url.PathEscape(p)
			}
			return scheme + "://" + ui + "@" + host + tail
		}
		other := mutatePassword(pass)
		if other == pass {
			t.Skip() // nothing to tell the password from the rest by
		}
		raw := build(pass)
		got, ctrl := redactOutputs(raw), strings.Join(redactOutputs(build(other)), "\n")
		for _, form := range passwordForms(pass) {
			if len(form) < 4 {
				continue
			}
			for i, s := range got {
				if strings.Contains(s, form) && !strings.Contains(ctrl, form) {
					t.Fatalf("URL %q (password %q): output %d %q shows the password as %q", raw, pass, i, s, form)
				}
			}
		}
	})
}
