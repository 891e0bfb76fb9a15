package kafka

// Fuzz target for what the adapter decodes from a record's headers (issue 9
// item 14). Message.Attempt does not come from headers here (the source
// counts deliveries itself), so what is decoded is the header list into
// Message.Header, and, on the way out, the consumer.Reason headers of a dead
// letter, which must read back as written whatever the record carried. The
// seeds (f.Add and testdata/fuzz/) run as ordinary tests; fuzz with
//
//	go test -run '^$' -fuzz '^FuzzHeaders$' -fuzztime 5m -parallel 1 ./broker/kafka

import (
	"strconv"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/queuekit/queuekit/consumer"
)

// headerKeys are the names the adapter writes; the encoding below refers to
// them by index so that the fuzzer finds them.
var headerKeys = []string{
	consumer.HeaderError,
	consumer.HeaderAttempts,
	consumer.HeaderSource,
	consumer.HeaderPermanent,
	consumer.HeaderFailedAt,
	HeaderTopic,
	HeaderPartition,
	HeaderOffset,
	"",
}

// decodeHeaders turns any bytes into a header list, as a record may carry
// it: repeated keys, empty keys, nil and empty values, any bytes.
//
//	count byte (mod 16), then count × (key, value)
//	key:   i < len(headerKeys) names headerKeys[i]; else length byte + bytes
//	value: length byte; 0xff is a nil value; else that many bytes
func decodeHeaders(b []byte) []kafkago.Header {
	next := func(n int) []byte {
		out := make([]byte, n)
		copy(out, b)
		b = b[min(n, len(b)):]
		return out
	}
	n := int(next(1)[0] % 16)
	hs := make([]kafkago.Header, n)
	for i := range hs {
		k := int(next(1)[0])
		if k < len(headerKeys) {
			hs[i].Key = headerKeys[k]
		} else {
			hs[i].Key = string(next(int(next(1)[0])))
		}
		if l := next(1)[0]; l != 0xff {
			hs[i].Value = next(int(l))
		}
	}
	return hs
}

func encodeHeaders(hs []kafkago.Header) []byte {
	b := []byte{byte(len(hs))}
	for _, h := range hs {
		known := false
		for i, k := range headerKeys {
			if k == h.Key {
				b, known = append(b, byte(i)), true
				break
			}
		}
		if !known {
			b = append(append(b, 0xfe, byte(len(h.Key))), h.Key...)
		}
		if h.Value == nil {
			b = append(b, 0xff)
		} else {
			b = append(append(b, byte(len(h.Value))), h.Value...)
		}
	}
	return b
}

func TestHeaderEncodingRoundTrips(t *testing.T) {
	hs := []kafkago.Header{{Key: consumer.HeaderError, Value: []byte("boom")}, {Key: "k", Value: nil}, {Key: "k", Value: []byte{}}}
	got := decodeHeaders(encodeHeaders(hs))
	if len(got) != len(hs) {
		t.Fatalf("decodeHeaders(encodeHeaders(%v)) = %v", hs, got)
	}
	for i := range hs {
		if got[i].Key != hs[i].Key || string(got[i].Value) != string(hs[i].Value) || (got[i].Value == nil) != (hs[i].Value == nil) {
			t.Fatalf("decodeHeaders(encodeHeaders(%v)) = %v", hs, got)
		}
	}
}

// FuzzHeaders decodes a record's headers into Message.Header (every key
// present with its last value, byte for byte), checks that publishing them
// again (toHeaders) carries the same map, and that a dead letter's reason
// and origin headers read back as written over whatever the record held.
func FuzzHeaders(f *testing.F) {
	for _, hs := range [][]kafkago.Header{
		nil,
		{},
		{{Key: "trace", Value: []byte("00-abc-01")}},
		{{Key: "k", Value: []byte("1")}, {Key: "k", Value: []byte("2")}},
		{{Key: "", Value: nil}, {Key: "k", Value: []byte{}}},
		{{Key: consumer.HeaderError, Value: []byte("forged")}, {Key: consumer.HeaderAttempts, Value: []byte("-1")}},
		{{Key: HeaderPartition, Value: []byte("x")}, {Key: HeaderOffset, Value: []byte("\xff\xfe")}},
		{{Key: "\xff", Value: []byte("\x00")}},
	} {
		f.Add(encodeHeaders(hs), "boom", 3, "", true, int64(0), 2, int64(41))
	}
	f.Add(encodeHeaders(nil), "", 0, "orders", false, int64(1700000000), 0, int64(0))
	f.Add(encodeHeaders(nil), "\xff not utf-8\n", -1, "\x00", false, int64(-1), -1, int64(-1))
	f.Fuzz(func(t *testing.T, data []byte, errText string, attempts int, source string, permanent bool, unix int64, partition int, offset int64) {
		hs := decodeHeaders(data)
		got := fromHeaders(hs)
		if len(hs) == 0 && got != nil {
			t.Fatalf("fromHeaders(%v) = %v; want nil", hs, got)
		}
		want := map[string]string{}
		for _, h := range hs {
			want[h.Key] = string(h.Value)
		}
		if len(got) != len(want) {
			t.Fatalf("fromHeaders(%v) = %v; want %v", hs, got, want)
		}
		for k, v := range want {
			if g, ok := got[k]; !ok || g != v {
				t.Fatalf("fromHeaders(%v)[%q] = %q, %v; want %q (the last value)", hs, k, g, ok, v)
			}
		}
		if again := fromHeaders(toHeaders(got)); len(again) != len(got) {
			t.Fatalf("fromHeaders(toHeaders(%v)) = %v", got, again)
		} else {
			for k, v := range got {
				if again[k] != v {
					t.Fatalf("fromHeaders(toHeaders(%v)) = %v", got, again)
				}
			}
		}

		// A dead letter's headers, as DeadLetter builds them.
		reason := consumer.Reason{Err: errText, Attempts: attempts, Source: source, Permanent: permanent}
		if unix != 0 {
			reason.Time = time.Unix(unix%(1<<40), 0)
		}
		if reason.Source == "" {
			reason.Source = "topic"
		}
		h := reason.Header(fromHeaders(hs))
		h[HeaderTopic] = "topic"
		h[HeaderPartition] = strconv.Itoa(partition)
		h[HeaderOffset] = strconv.FormatInt(offset, 10)
		back := fromHeaders(toHeaders(h))
		for k, v := range reason.Header(nil) {
			if back[k] != v {
				t.Fatalf("dead letter of headers %v with reason %+v: %s = %q; want %q", hs, reason, k, back[k], v)
			}
		}
		if a, err := strconv.Atoi(back[consumer.HeaderAttempts]); err != nil || a != attempts {
			t.Fatalf("dead letter: %s = %q; want %d", consumer.HeaderAttempts, back[consumer.HeaderAttempts], attempts)
		}
		if p, err := strconv.Atoi(back[HeaderPartition]); err != nil || p != partition {
			t.Fatalf("dead letter: %s = %q; want %d", HeaderPartition, back[HeaderPartition], partition)
		}
		if o, err := strconv.ParseInt(back[HeaderOffset], 10, 64); err != nil || o != offset {
			t.Fatalf("dead letter: %s = %q; want %d", HeaderOffset, back[HeaderOffset], offset)
		}
		for k, v := range want {
			if _, ours := h[k]; ours && k != consumer.HeaderError && k != consumer.HeaderAttempts && k != consumer.HeaderSource &&
				k != consumer.HeaderPermanent && k != consumer.HeaderFailedAt && k != HeaderTopic && k != HeaderPartition && k != HeaderOffset {
				if back[k] != v {
					t.Fatalf("dead letter of headers %v: the record's own header %q = %q; want %q kept", hs, k, back[k], v)
				}
			}
		}
	})
}
