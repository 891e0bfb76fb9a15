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
	"bufio"
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"strconv"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	fetchapi "github.com/segmentio/kafka-go/protocol/fetch"
)

// headerKeys are the names the adapter writes; the encoding below refers to
// them by index so that the fuzzer finds them.
var headerKeys = []string{
	broker.HeaderError,
	broker.HeaderAttempts,
	broker.HeaderSource,
	broker.HeaderPermanent,
	broker.HeaderFailedAt,
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
	hs := []kafkago.Header{{Key: broker.HeaderError, Value: []byte("boom")}, {Key: "k", Value: nil}, {Key: "k", Value: []byte{}}}
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
		{{Key: broker.HeaderError, Value: []byte("forged")}, {Key: broker.HeaderAttempts, Value: []byte("-1")}},
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
		reason := broker.Reason{Err: errText, Attempts: attempts, Source: source, Permanent: permanent}
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
		if a, err := strconv.Atoi(back[broker.HeaderAttempts]); err != nil || a != attempts {
			t.Fatalf("dead letter: %s = %q; want %d", broker.HeaderAttempts, back[broker.HeaderAttempts], attempts)
		}
		if p, err := strconv.Atoi(back[HeaderPartition]); err != nil || p != partition {
			t.Fatalf("dead letter: %s = %q; want %d", HeaderPartition, back[HeaderPartition], partition)
		}
		if o, err := strconv.ParseInt(back[HeaderOffset], 10, 64); err != nil || o != offset {
			t.Fatalf("dead letter: %s = %q; want %d", HeaderOffset, back[HeaderOffset], offset)
		}
		for k, v := range want {
			if _, ours := h[k]; ours && k != broker.HeaderError && k != broker.HeaderAttempts && k != broker.HeaderSource &&
				k != broker.HeaderPermanent && k != broker.HeaderFailedAt && k != HeaderTopic && k != HeaderPartition && k != HeaderOffset {
				if back[k] != v {
					t.Fatalf("dead letter of headers %v: the record's own header %q = %q; want %q kept", hs, k, back[k], v)
				}
			}
		}
	})
}

// A Kafka log written by transactional and plain producers, for
// FuzzFetchDecode. Each op byte writes one batch:
//
//	bits 0-1: producer (0-3)
//	bits 2-3: 0 a batch in the producer's transaction (one starts if none is
//	            open), 1 a batch of a plain producer, 2 commit marker,
//	            3 abort marker (a marker without an open transaction is
//	            skipped)
//	bits 4-5: records in a data batch, minus 1
type logBatch struct {
	base    int64
	pid     int64
	txn     bool
	control bool
	abort   bool // control: abort marker (else commit)
	n       int
}

type abortedTxn struct{ pid, first, marker int64 }

func buildLog(ops []byte) (batches []logBatch, aborted []abortedTxn, open map[int64]int64) {
	open = map[int64]int64{} // producer -> first offset of its open transaction
	var off int64
	for _, op := range ops {
		pid := int64(op & 3)
		n := int(op>>4&3) + 1
		b := logBatch{base: off, pid: pid}
		switch op >> 2 & 3 {
		case 0:
			b.txn, b.n = true, n
			if _, ok := open[pid]; !ok {
				open[pid] = off
			}
		case 1:
			b.pid, b.n = 100+pid, n
		case 2, 3:
			first, ok := open[pid]
			if !ok {
				continue
			}
			b.txn, b.control, b.abort, b.n = true, true, op>>2&3 == 3, 1
			if b.abort {
				aborted = append(aborted, abortedTxn{pid: pid, first: first, marker: off})
			}
			delete(open, pid)
		}
		batches = append(batches, b)
		off += int64(b.n)
	}
	return batches, aborted, open
}

// encodeBatch writes b in the v2 record batch format (what brokers send).
func encodeBatch(b logBatch) []byte {
	var recs []byte
	for i := range b.n {
		off := b.base + int64(i)
		var key, value []byte
		var headers [][2][]byte
		if b.control {
			key = []byte{0, 0, 0, 1} // version 0, type 1 commit
			if b.abort {
				key[3] = 0
			}
			value = []byte{0, 0, 0, 0, 0, 0}
		} else {
			key = []byte("k" + strconv.FormatInt(off, 10))
			value = []byte("v" + strconv.FormatInt(off, 10))
			headers = [][2][]byte{{[]byte("h"), []byte(strconv.FormatInt(off, 10))}}
		}
		var r []byte
		r = append(r, 0)                     // attributes
		r = binary.AppendVarint(r, 0)        // timestamp delta
		r = binary.AppendVarint(r, int64(i)) // offset delta
		r = binary.AppendVarint(r, int64(len(key)))
		r = append(r, key...)
		r = binary.AppendVarint(r, int64(len(value)))
		r = append(r, value...)
		r = binary.AppendVarint(r, int64(len(headers)))
		for _, h := range headers {
			r = binary.AppendVarint(r, int64(len(h[0])))
			r = append(r, h[0]...)
			r = binary.AppendVarint(r, int64(len(h[1])))
			r = append(r, h[1]...)
		}
		recs = binary.AppendVarint(recs, int64(len(r)))
		recs = append(recs, r...)
	}
	var attrs int16
	if b.txn {
		attrs |= 0x10
	}
	if b.control {
		attrs |= 0x20
	}
	var body []byte // from attributes on: what the CRC covers
	body = binary.BigEndian.AppendUint16(body, uint16(attrs))
	body = binary.BigEndian.AppendUint32(body, uint32(b.n-1))         // last offset delta
	body = binary.BigEndian.AppendUint64(body, uint64(1700000000000)) // first timestamp
	body = binary.BigEndian.AppendUint64(body, uint64(1700000000000)) // max timestamp
	body = binary.BigEndian.AppendUint64(body, uint64(b.pid))
	body = binary.BigEndian.AppendUint16(body, 0)              // producer epoch
	body = binary.BigEndian.AppendUint32(body, uint32(b.base)) // base sequence
	body = binary.BigEndian.AppendUint32(body, uint32(b.n))
	body = append(body, recs...)
	var out []byte
	out = binary.BigEndian.AppendUint64(out, uint64(b.base))
	out = binary.BigEndian.AppendUint32(out, uint32(4+1+4+len(body))) // batch length
	out = binary.BigEndian.AppendUint32(out, 0)                       // leader epoch
	out = append(out, 2)                                              // magic
	out = binary.BigEndian.AppendUint32(out, crc32.Checksum(body, crc32.MakeTable(crc32.Castagnoli)))
	return append(out, body...)
}

// FuzzFetchDecode feeds the fetch decoder logs of interleaved transactions
// (committed, aborted, open), plain batches and markers, fetched from any
// offset, and checks Kafka's read-committed semantics: every record at or
// after the fetch offset comes out once, in order; transaction markers are
// never handed out; with ReadCommitted the records of aborted transactions
// are not either, and nothing else is held back; with ReadUncommitted every
// data record is handed out; keys, values and headers arrive intact; and the
// next fetch offset follows the last record.
func FuzzFetchDecode(f *testing.F) {
	f.Add([]byte{0x00, 0x08}, uint8(0), true)                         // one committed transaction
	f.Add([]byte{0x00, 0x0c}, uint8(0), true)                         // one aborted transaction
	f.Add([]byte{0x00, 0x05, 0x0c, 0x30, 0x08, 0x09}, uint8(2), true) // interleaved, plain batch between
	f.Add([]byte{0x00, 0x0c, 0x00, 0x08}, uint8(0), true)             // aborted, then committed, same producer
	f.Add([]byte{0x00, 0x0c, 0x00, 0x08}, uint8(2), true)             // fetched after the abort marker
	f.Add([]byte{0x30, 0x0c, 0x04}, uint8(1), true)                   // from the middle of a batch
	f.Add([]byte{0x00, 0x01, 0x0d, 0x08}, uint8(0), false)            // read uncommitted
	f.Add([]byte{0x00, 0x04}, uint8(0), true)                         // open transaction: not returned read-committed
	ops := make([]byte, 70)                                           // more than a chunk of records
	for i := range ops {
		ops[i] = 0x34
	}
	f.Add(ops, uint8(3), true)
	f.Fuzz(func(t *testing.T, ops []byte, fetchSel uint8, readCommitted bool) {
		if len(ops) > 200 {
			return
		}
		batches, aborted, open := buildLog(ops)
		var end int64
		if len(batches) > 0 {
			last := batches[len(batches)-1]
			end = last.base + int64(last.n)
		}
		// What the broker returns: read-committed, nothing from the first
		// open transaction on (the last stable offset).
		lso := end
		if readCommitted {
			for _, first := range open {
				lso = min(lso, first)
			}
		}
		fetchOffset := int64(fetchSel) % (lso + 1)
		var resp []logBatch
		for _, b := range batches {
			if b.base+int64(b.n) > fetchOffset && b.base < lso {
				resp = append(resp, b)
			}
		}
		var txns []fetchapi.ResponseTransaction
		if readCommitted {
			for _, a := range aborted {
				if a.marker >= fetchOffset && a.first < lso {
					txns = append(txns, fetchapi.ResponseTransaction{ProducerID: a.pid, FirstOffset: a.first})
				}
			}
		}
		var raw []byte
		for _, b := range resp {
			raw = append(raw, encodeBatch(b)...)
		}
		var rs protocol.RecordSet
		if len(raw) > 0 {
			framed := binary.BigEndian.AppendUint32(nil, uint32(len(raw)))
			if _, err := rs.ReadFrom(bufio.NewReader(bytes.NewReader(append(framed, raw...)))); err != nil {
				t.Fatalf("kafka-go cannot read the batches written for %x: %v", ops, err)
			}
		}
		iso := ReadUncommitted
		if readCommitted {
			iso = ReadCommitted
		}
		s := &Source{cfg: Config{Topic: "t", Isolation: iso, MaxInFlight: 0}}
		g := &generation{s: s}
		p := &partition{id: 0}
		part := &fetchapi.ResponsePartition{HighWatermark: end, LastStableOffset: lso, AbortedTransactions: txns, RecordSet: rs}
		recs, next, err := g.decode(p, fetched{offset: fetchOffset, part: part})
		if err != nil {
			t.Fatalf("decode(log %x from %d) = %v", ops, fetchOffset, err)
		}

		// What must come out, record by record.
		abortedAt := func(b logBatch) bool {
			for _, a := range aborted {
				if a.pid == b.pid && a.first <= b.base && b.base < a.marker {
					return true
				}
			}
			return false
		}
		i := 0
		want := fetchOffset
		for _, b := range resp {
			for j := range b.n {
				off := b.base + int64(j)
				if off < fetchOffset {
					continue
				}
				if i >= len(recs) {
					t.Fatalf("decode(log %x from %d, read-committed %v): %d records; record %d is missing", ops, fetchOffset, readCommitted, len(recs), off)
				}
				r := recs[i]
				i++
				if r.m.Offset != off {
					t.Fatalf("decode(log %x from %d): record %d has offset %d; want %d", ops, fetchOffset, i-1, r.m.Offset, off)
				}
				wantSkip := b.control || (readCommitted && b.txn && abortedAt(b))
				if r.skip != wantSkip {
					t.Fatalf("decode(log %x from %d, read-committed %v): offset %d (producer %d, transactional %v, marker %v, aborted %v) skip = %v; want %v",
						ops, fetchOffset, readCommitted, off, b.pid, b.txn, b.control, abortedAt(b), r.skip, wantSkip)
				}
				if !wantSkip {
					k, v := "k"+strconv.FormatInt(off, 10), "v"+strconv.FormatInt(off, 10)
					if string(r.m.Key) != k || string(r.m.Value) != v || len(r.m.Headers) != 1 || string(r.m.Headers[0].Value) != strconv.FormatInt(off, 10) {
						t.Fatalf("decode: offset %d = key %q value %q headers %v; want %q %q [h=%d]", off, r.m.Key, r.m.Value, r.m.Headers, k, v, off)
					}
				} else if r.m.Key != nil || r.m.Value != nil || r.m.Headers != nil {
					t.Fatalf("decode: skipped offset %d carries key %q value %q headers %v", off, r.m.Key, r.m.Value, r.m.Headers)
				}
				want = off + 1
			}
		}
		if i != len(recs) {
			t.Fatalf("decode(log %x from %d): %d records; want %d", ops, fetchOffset, len(recs), i)
		}
		if next != want {
			t.Fatalf("decode(log %x from %d) next offset = %d; want %d", ops, fetchOffset, next, want)
		}
	})
}
