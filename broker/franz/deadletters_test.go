package franz_test

// The dead-letter operations' own tests, for what the brokertest suite (run
// by the conformance test) does not cover: paging, the on-wire formats
// shared with the kafka-go adapter, progress that survives a restart, the
// redrive limit and headers, transactions. They run against the Kafka
// protocol (in-process kfake cluster) and write dead letters with a raw
// kgo client, as a Source writes them.

import (
	"cmp"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/franz"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// dlDead is a dead letter to write: on partition part of the dead-letter
// topic, failed on topic src, partition srcPart, offset srcOff.
type dlDead struct {
	part      int32
	body      string
	src       string
	srcPart   int
	srcOff    int64
	redriven  int
	noHeaders bool
	err       string // the error text; default "boom: " + body
}

// dlTime is the timestamp of the dead letters the tests write.
var dlTime = time.UnixMilli(1_750_000_000_123)

// dlWrite writes dead letters to topic as a Source does (the reason
// headers, and the topic/partition/offset it consumed them from).
func dlWrite(t testing.TB, c *kfake.Cluster, topic string, ds ...dlDead) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	recs := make([]*kgo.Record, len(ds))
	for i, d := range ds {
		r := &kgo.Record{Topic: topic, Partition: d.part, Key: []byte("k-" + d.body), Value: []byte(d.body), Timestamp: dlTime}
		if !d.noHeaders {
			h := map[string]string{
				broker.HeaderError:     cmp.Or(d.err, "boom: "+d.body),
				broker.HeaderAttempts:  "3",
				broker.HeaderSource:    d.src,
				broker.HeaderPermanent: "false",
				broker.HeaderFailedAt:  dlTime.UTC().Format(time.RFC3339Nano),
				"x-queuekit-topic":     d.src,
				"x-queuekit-partition": strconv.Itoa(d.srcPart),
				"x-queuekit-offset":    strconv.FormatInt(d.srcOff, 10),
				"x-app":                "kept",
			}
			if d.redriven > 0 {
				h[broker.HeaderRedriven] = strconv.Itoa(d.redriven)
			}
			for k, v := range h {
				r.Headers = append(r.Headers, kgo.RecordHeader{Key: k, Value: []byte(v)})
			}
		}
		recs[i] = r
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("write dead letters: %v", err)
	}
}

// dlFingerprint is the fingerprint the kafka-go adapter writes in its
// markers, computed here from its documented recipe: FNV-1a 64 over the
// timestamp in milliseconds (8 bytes, big-endian), the key, a zero byte and
// the value, in lower-case hexadecimal.
func dlFingerprint(ts time.Time, key, value string) string {
	h := fnv.New64a()
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(ts.UnixMilli()))
	h.Write(b[:])
	h.Write([]byte(key))
	h.Write([]byte{0})
	h.Write([]byte(value))
	return strconv.FormatUint(h.Sum64(), 16)
}

func dlNew(t testing.TB, c *kfake.Cluster, topic string) *franz.DeadLetters {
	t.Helper()
	// The warnings (a recreated topic) are expected where they occur.
	d, err := franz.NewDeadLetters(franz.DeadLetterConfig{Brokers: c.ListenAddrs(), Topic: topic, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("NewDeadLetters: %v", err)
	}
	t.Cleanup(func() { _ = d.Close(context.Background()) })
	return d
}

func dlCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func dlListAll(t testing.TB, d *franz.DeadLetters, q broker.DeadLetterQuery) []broker.DeadLetter {
	t.Helper()
	var out []broker.DeadLetter
	for {
		page, err := d.List(dlCtx(t), q)
		if err != nil {
			t.Fatalf("List(%+v) = %v", q, err)
		}
		out = append(out, page.Items...)
		if page.Next == "" {
			return out
		}
		q.Cursor = page.Next
	}
}

func dlBodies(ds []broker.DeadLetter) string {
	var b []string
	for _, d := range ds {
		b = append(b, string(d.Message.Body))
	}
	return strings.Join(b, ",")
}

func TestDeadLettersConfigErrorsAreInvalidConfig(t *testing.T) {
	t.Parallel()
	ok := []string{"localhost:9092"}
	long := strings.Repeat("t", 240)
	cases := []struct {
		name string
		cfg  franz.DeadLetterConfig
	}{
		{"no brokers", franz.DeadLetterConfig{Topic: "t"}},
		{"a broker URL", franz.DeadLetterConfig{Brokers: []string{"kafka://u:p@h:1"}, Topic: "t"}},
		{"no topic", franz.DeadLetterConfig{Brokers: ok}},
		{"a bad topic", franz.DeadLetterConfig{Brokers: ok, Topic: "a/b"}},
		{"a bad dead-letter topic", franz.DeadLetterConfig{Brokers: ok, Topic: "t", DeadLetterTopic: "a b"}},
		{"the dead-letter topic is the topic", franz.DeadLetterConfig{Brokers: ok, Topic: "t", DeadLetterTopic: "t"}},
		{"no room for the done topic's suffix", franz.DeadLetterConfig{Brokers: ok, Topic: long}},
		{"a nil client option", franz.DeadLetterConfig{Brokers: ok, Topic: "t", ClientOptions: []kgo.Opt{nil}}},
	}
	for _, c := range cases {
		if _, err := franz.NewDeadLetters(c.cfg); !errors.Is(err, broker.ErrInvalidConfig) {
			t.Errorf("NewDeadLetters(%s) = %v; want an error wrapping broker.ErrInvalidConfig", c.name, err)
		}
	}
	var zero franz.DeadLetters
	if _, err := zero.Count(context.Background(), broker.DeadLetterFilter{}); !errors.Is(err, broker.ErrInvalidConfig) {
		t.Errorf("Count on the zero DeadLetters = %v; want an error wrapping broker.ErrInvalidConfig", err)
	}
}

// TestDeadLettersListPages follows List's cursors over three partitions
// (led by three brokers): every dead letter once, by partition then offset,
// pages of at most Limit; the cursor is the kafka-go adapter's (base64url
// of "k1:<p>:<offset>").
func TestDeadLettersListPages(t *testing.T) {
	t.Parallel()
	c := pubClusterN(t, 3, map[string]int32{"orders": 3, "orders.dlt": 3})
	dlWrite(t, c, "orders.dlt",
		dlDead{part: 1, body: "b0", src: "orders"}, dlDead{part: 0, body: "a0", src: "orders"},
		dlDead{part: 2, body: "c0", src: "orders"}, dlDead{part: 0, body: "a1", src: "orders"},
		dlDead{part: 1, body: "b1", src: "orders"}, dlDead{part: 0, body: "a2", src: "orders"},
		dlDead{part: 2, body: "c1", src: "orders", noHeaders: true})
	d := dlNew(t, c, "orders")

	page, err := d.List(dlCtx(t), broker.DeadLetterQuery{Limit: 2})
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if want := base64.RawURLEncoding.EncodeToString([]byte("k1:0:2")); page.Next != want {
		t.Errorf("first page's Next = %q; want %q (base64url of k1:0:2, the kafka-go adapter's cursor)", page.Next, want)
	}
	all := dlListAll(t, d, broker.DeadLetterQuery{Limit: 2})
	if got, want := dlBodies(all), "a0,a1,a2,b0,b1,c0,c1"; got != want {
		t.Fatalf("List pages = %s; want %s", got, want)
	}
	a1 := all[1]
	if a1.ID != "0:1" || a1.Message.ID != "orders.dlt/0/1" || a1.Message.Topic != "orders.dlt" || string(a1.Message.Key) != "k-a1" ||
		!a1.HasReason || a1.Reason.Err != "boom: a1" || a1.Reason.Attempts != 3 || a1.Reason.Source != "orders" || !a1.Reason.Time.Equal(dlTime) ||
		a1.Message.Header["x-app"] != "kept" || a1.Partition != 0 || a1.Offset != 0 || !a1.Message.Time.Equal(dlTime) {
		t.Errorf("List item 0:1 = %+v; want id 0:1, its headers, reason and times", a1)
	}
	if c1 := all[6]; c1.HasReason || c1.Partition != -1 || c1.Offset != -1 {
		t.Errorf("a dead letter without headers = %+v; want HasReason false, Partition and Offset -1", c1)
	}
	if got := dlListAll(t, d, broker.DeadLetterQuery{DeadLetterFilter: broker.DeadLetterFilter{IDs: []string{"2:0", "0:2", "9:0", "x"}}}); dlBodies(got) != "a2,c0" {
		t.Errorf("List(ids 2:0, 0:2 and two unknown) = %s; want a2,c0", dlBodies(got))
	}
	if n, err := d.Count(dlCtx(t), broker.DeadLetterFilter{Reason: "BOOM: B"}); n != 2 || err != nil {
		t.Errorf("Count(reason BOOM: B) = %d, %v; want 2", n, err)
	}

	if _, err := d.List(dlCtx(t), broker.DeadLetterQuery{Cursor: "not-a-cursor"}); !errors.Is(err, broker.ErrInvalidConfig) {
		t.Errorf("List(a malformed cursor) = %v; want an error wrapping broker.ErrInvalidConfig", err)
	}
	far := base64.RawURLEncoding.EncodeToString([]byte("k1:9:0"))
	if _, err := d.List(dlCtx(t), broker.DeadLetterQuery{Cursor: far}); !errors.Is(err, broker.ErrDeadLetterNotFound) {
		t.Errorf("List(a cursor naming partition 9 of 3) = %v; want an error wrapping broker.ErrDeadLetterNotFound", err)
	}
}

// dlDone reads the done topic (last value per key; "" for a tombstone).
func dlDone(t testing.TB, c *kfake.Cluster, topic string) map[string]string {
	t.Helper()
	out := map[string]string{}
	adm, cl := dlAdmin(t, c)
	defer cl.Close()
	ends, err := adm.ListEndOffsets(dlCtx(t), topic)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	ends.Each(func(o kadm.ListedOffset) { n += int(o.Offset) })
	if n == 0 {
		return out
	}
	for _, r := range pubRead(t, c, topic, n) {
		out[string(r.Key)] = string(r.Value)
	}
	return out
}

func dlAdmin(t testing.TB, c *kfake.Cluster) (*kadm.Client, *kgo.Client) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	return kadm.NewClient(cl), cl
}

// TestDeadLettersPurgeProgressSurvivesARestart purges the two oldest dead
// letters and one further on, then asks a new DeadLetters (another process)
// and checks the bookkeeping the kafka-go adapter reads: a progress marker
// "progress:0:2" and a done marker "0:4" in the compacted done topic, both
// with the fingerprint of their record, and the group's committed offset.
func TestDeadLettersPurgeProgressSurvivesARestart(t *testing.T) {
	t.Parallel()
	c := pubCluster(t, map[string]int32{"pay": 1, "pay.dlt": 1})
	var ds []dlDead
	for i := range 6 {
		ds = append(ds, dlDead{body: "m" + strconv.Itoa(i), src: "pay"})
	}
	dlWrite(t, c, "pay.dlt", ds...)
	d := dlNew(t, c, "pay")

	res, err := d.Purge(dlCtx(t), broker.DeadLetterSelection{All: true, Max: 2}, false)
	if err != nil || strings.Join(res.Done, ",") != "0:0,0:1" {
		t.Fatalf("Purge(All, Max 2) = %+v, %v; want 0:0 and 0:1 done", res, err)
	}
	res, err = d.Purge(dlCtx(t), broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: []string{"0:4", "0:0", "7:1"}}}, false)
	if !errors.Is(err, broker.ErrDeadLetterNotFound) || strings.Join(res.Done, ",") != "0:4" || strings.Join(res.Missing, ",") != "0:0,7:1" {
		t.Fatalf("Purge(0:4, 0:0 purged already, 7:1) = %+v, %v; want 0:4 done, 0:0 and 7:1 missing", res, err)
	}

	restarted := dlNew(t, c, "pay")
	if got := dlBodies(dlListAll(t, restarted, broker.DeadLetterQuery{})); got != "m2,m3,m5" {
		t.Errorf("after a restart List = %s; want m2,m3,m5", got)
	}
	done := dlDone(t, c, "pay.dlt.queuekit-done")
	checkMark := func(key, verb, body string) {
		t.Helper()
		f := strings.Fields(done[key])
		if len(f) != 3 || f[0] != verb || f[2] != dlFingerprint(dlTime, "k-"+body, body) {
			t.Errorf("done topic %q = %q; want \"%s <time> %s\"", key, done[key], verb, dlFingerprint(dlTime, "k-"+body, body))
			return
		}
		if _, err := time.Parse(time.RFC3339Nano, f[1]); err != nil {
			t.Errorf("done topic %q time %q: %v", key, f[1], err)
		}
	}
	checkMark("progress:0:2", "purged", "m1") // the record before the progress
	checkMark("0:4", "purged", "m4")

	adm, cl := dlAdmin(t, c)
	defer cl.Close()
	offs, err := adm.FetchOffsets(dlCtx(t), "pay.dlt.queuekit")
	if err != nil {
		t.Fatal(err)
	}
	if o, ok := offs.Lookup("pay.dlt", 0); !ok || o.At != 2 {
		t.Errorf("group pay.dlt.queuekit committed %+v on pay.dlt/0; want 2", o)
	}
	rcs, err := adm.DescribeTopicConfigs(dlCtx(t), "pay.dlt.queuekit-done")
	if err != nil {
		t.Fatal(err)
	}
	rc, _ := rcs.On("pay.dlt.queuekit-done", nil)
	for _, cfg := range rc.Configs {
		if cfg.Key == "cleanup.policy" && cfg.MaybeValue() != "compact" {
			t.Errorf("done topic cleanup.policy = %q; want compact", cfg.MaybeValue())
		}
	}

	// Purging the rest moves the progress past the done marker, which is
	// then deleted (a tombstone).
	if res, err := restarted.Purge(dlCtx(t), broker.DeadLetterSelection{All: true}, false); err != nil || strings.Join(res.Done, ",") != "0:2,0:3,0:5" {
		t.Fatalf("Purge(All) = %+v, %v; want 0:2,0:3,0:5", res, err)
	}
	done = dlDone(t, c, "pay.dlt.queuekit-done")
	checkMark("progress:0:6", "purged", "m5")
	if done["0:4"] != "" {
		t.Errorf("after the progress passed it, done topic 0:4 = %q; want it tombstoned", done["0:4"])
	}
	// A call deletes a progress marker only below a higher one it read:
	// the next one deletes progress:0:2.
	if res, err := restarted.Purge(dlCtx(t), broker.DeadLetterSelection{All: true}, false); err != nil || len(res.Done) != 0 {
		t.Fatalf("Purge(All) of nothing = %+v, %v; want nothing done, no error", res, err)
	}
	done = dlDone(t, c, "pay.dlt.queuekit-done")
	checkMark("progress:0:6", "purged", "m5")
	if done["progress:0:2"] != "" {
		t.Errorf("done topic progress:0:2 = %q; want it tombstoned below progress:0:6", done["progress:0:2"])
	}
	if n, err := dlNew(t, c, "pay").Count(dlCtx(t), broker.DeadLetterFilter{}); n != 0 || err != nil {
		t.Errorf("Count after purging all = %d, %v; want 0", n, err)
	}
}

// TestDeadLettersReadTheKafkaGoAdaptersMarkers writes the bookkeeping of
// the kafka-go adapter by hand, in its documented format, and checks that
// this adapter honours it: a progress marker hides the dead letters before
// it, a done marker with the record's fingerprint hides that record, one
// with another fingerprint (a recreated topic) or none hides nothing.
func TestDeadLettersReadTheKafkaGoAdaptersMarkers(t *testing.T) {
	t.Parallel()
	c := pubCluster(t, map[string]int32{"inv": 1, "inv.dlt": 1})
	adm, cl := dlAdmin(t, c)
	defer cl.Close()
	compact := "compact"
	if _, err := adm.CreateTopic(dlCtx(t), 1, 1, map[string]*string{"cleanup.policy": &compact}, "inv.dlt.queuekit-done"); err != nil {
		t.Fatal(err)
	}
	var ds []dlDead
	for i := range 6 {
		ds = append(ds, dlDead{body: "m" + strconv.Itoa(i), src: "inv"})
	}
	dlWrite(t, c, "inv.dlt", ds...)
	at := "2026-01-02T03:04:05.000000006Z"
	marks := map[string]string{
		"progress:0:2": "redriven " + at + " " + dlFingerprint(dlTime, "k-m1", "m1"),
		"0:3":          "purged " + at + " " + dlFingerprint(dlTime, "k-m3", "m3"),
		"0:4":          "purged " + at + " " + dlFingerprint(dlTime, "k-other", "other"),
		"0:5":          "purged " + at,
	}
	var recs []*kgo.Record
	for k, v := range marks {
		recs = append(recs, &kgo.Record{Topic: "inv.dlt.queuekit-done", Key: []byte(k), Value: []byte(v)})
	}
	if err := cl.ProduceSync(dlCtx(t), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	d := dlNew(t, c, "inv")
	if got := dlBodies(dlListAll(t, d, broker.DeadLetterQuery{})); got != "m2,m4,m5" {
		t.Errorf("List = %s; want m2,m4,m5 (m0, m1 before the progress, m3 marked done)", got)
	}
}

// TestDeadLettersRedriveLimitAndCopy redrives to the source topic: a dead
// letter redriven DefaultMaxRedrives times already is skipped and stays;
// a higher MaxRedrives lets it go. The copy goes back to the partition it
// was consumed from, without the reason and position headers, with the
// redrive headers.
func TestDeadLettersRedriveLimitAndCopy(t *testing.T) {
	t.Parallel()
	c := pubCluster(t, map[string]int32{"ship": 4, "ship.dlt": 1})
	dlWrite(t, c, "ship.dlt",
		dlDead{body: "tired", src: "ship", srcPart: 3, srcOff: 17, redriven: broker.DefaultMaxRedrives},
		dlDead{body: "fresh", src: "ship", srcPart: 2, srcOff: 5},
		dlDead{body: "elsewhere", src: "other"})
	d := dlNew(t, c, "ship")

	res, err := d.Redrive(dlCtx(t), broker.DeadLetterSelection{All: true}, broker.RedriveOptions{})
	if strings.Join(res.Done, ",") != "0:1" || len(res.Skipped) != 2 ||
		!errors.Is(res.Skipped[0], broker.ErrRedriveLimit) || !errors.Is(res.Skipped[1], broker.ErrNoSource) ||
		!errors.Is(err, broker.ErrRedriveLimit) || !errors.Is(err, broker.ErrNoSource) {
		t.Fatalf("Redrive(All) = %+v, %v; want 0:1 done, 0:0 skipped (limit), 0:2 skipped (no source)", res, err)
	}
	if got := dlBodies(dlListAll(t, d, broker.DeadLetterQuery{})); got != "tired,elsewhere" {
		t.Errorf("after Redrive List = %s; want tired,elsewhere", got)
	}
	res, err = d.Redrive(dlCtx(t), broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: []string{"0:0"}}},
		broker.RedriveOptions{MaxRedrives: broker.DefaultMaxRedrives + 1})
	if err != nil || strings.Join(res.Done, ",") != "0:0" {
		t.Fatalf("Redrive(0:0, MaxRedrives %d) = %+v, %v; want it done", broker.DefaultMaxRedrives+1, res, err)
	}

	recs := pubRead(t, c, "ship", 2)
	for _, r := range recs {
		h := map[string]string{}
		for _, x := range r.Headers {
			h[x.Key] = string(x.Value)
		}
		wantPart, wantFrom, wantN := int32(2), "0:1", "1"
		if string(r.Value) == "tired" {
			wantPart, wantFrom, wantN = 3, "0:0", strconv.Itoa(broker.DefaultMaxRedrives+1)
		}
		if r.Partition != wantPart || string(r.Key) != "k-"+string(r.Value) {
			t.Errorf("copy %s on partition %d key %q; want partition %d (consumed from) and its key", r.Value, r.Partition, r.Key, wantPart)
		}
		if h[broker.HeaderRedriven] != wantN || h[broker.HeaderRedrivenFrom] != wantFrom || h[broker.HeaderRedrivenAt] == "" || h["x-app"] != "kept" {
			t.Errorf("copy %s headers %v; want redriven %s from %s, a time, x-app kept", r.Value, h, wantN, wantFrom)
		}
		for _, k := range []string{broker.HeaderError, broker.HeaderAttempts, broker.HeaderSource, broker.HeaderFailedAt, broker.HeaderPermanent,
			"x-queuekit-topic", "x-queuekit-partition", "x-queuekit-offset"} {
			if _, ok := h[k]; ok {
				t.Errorf("copy %s keeps header %s; want it removed", r.Value, k)
			}
		}
	}
	if n, err := d.Count(dlCtx(t), broker.DeadLetterFilter{}); n != 1 || err != nil {
		t.Errorf("Count = %d, %v; want 1 (the foreign one)", n, err)
	}
}

// TestDeadLettersSkipAbortedTransactions: records of an aborted
// transaction in the dead-letter topic, and the transactions' markers, are
// not dead letters (List reads committed records only).
func TestDeadLettersSkipAbortedTransactions(t *testing.T) {
	t.Parallel()
	c := pubCluster(t, map[string]int32{"tx": 1, "tx.dlt": 1})
	dlWrite(t, c, "tx.dlt", dlDead{body: "before", src: "tx"})
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.TransactionalID("dl-test"), kgo.DefaultProduceTopic("tx.dlt"))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for _, commit := range []kgo.TransactionEndTry{kgo.TryAbort, kgo.TryCommit} {
		if err := cl.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		body := "aborted"
		if commit {
			body = "committed"
		}
		if err := cl.ProduceSync(dlCtx(t), &kgo.Record{Value: []byte(body)}).FirstErr(); err != nil {
			t.Fatal(err)
		}
		if err := cl.EndTransaction(dlCtx(t), commit); err != nil {
			t.Fatal(err)
		}
	}
	dlWrite(t, c, "tx.dlt", dlDead{body: "after", src: "tx"})
	d := dlNew(t, c, "tx")
	if got := dlBodies(dlListAll(t, d, broker.DeadLetterQuery{Limit: 1})); got != "before,committed,after" {
		t.Errorf("List = %s; want before,committed,after", got)
	}
	if res, err := d.Purge(dlCtx(t), broker.DeadLetterSelection{All: true}, false); err != nil || len(res.Done) != 3 {
		t.Errorf("Purge(All) = %+v, %v; want 3 done", res, err)
	}
}

// TestDeadLettersDestinationChecks: a destination that does not exist, the
// dead-letter topic itself or a done topic is refused before anything is
// done; a missing dead-letter topic is an error; Close refuses later calls.
func TestDeadLettersDestinationChecks(t *testing.T) {
	t.Parallel()
	c := pubCluster(t, map[string]int32{"a": 1, "a.dlt": 1})
	dlWrite(t, c, "a.dlt", dlDead{body: "x", src: "a"})
	d := dlNew(t, c, "a")
	for _, dest := range []string{"missing", "a.dlt", "a.dlt.queuekit-done", "b.queuekit-done", "bad name"} {
		res, err := d.Redrive(dlCtx(t), broker.DeadLetterSelection{All: true}, broker.RedriveOptions{Destination: dest})
		if !errors.Is(err, broker.ErrNoSource) && !errors.Is(err, broker.ErrInvalidConfig) || len(res.Done) != 0 {
			t.Errorf("Redrive(Destination %q) = %+v, %v; want it refused", dest, res, err)
		}
	}
	if n, err := d.Count(dlCtx(t), broker.DeadLetterFilter{}); n != 1 || err != nil {
		t.Errorf("Count = %d, %v; want 1", n, err)
	}
	if _, err := dlNew(t, c, "nodlt").Count(dlCtx(t), broker.DeadLetterFilter{}); err == nil {
		t.Error("Count of a dead-letter topic that does not exist = nil error; want one")
	}
	if err := d.Close(context.Background()); err != nil {
		t.Fatalf("Close = %v", err)
	}
	if _, err := d.Count(dlCtx(t), broker.DeadLetterFilter{}); !errors.Is(err, franz.ErrDeadLettersClosed) {
		t.Errorf("Count after Close = %v; want an error wrapping ErrDeadLettersClosed", err)
	}
}

// dlStuckFetches leaves Fetch requests unanswered until the returned
// function is called (or the test ends).
func dlStuckFetches(t testing.TB, c *kfake.Cluster) (release func()) {
	var stuck atomic.Bool
	stuck.Store(true)
	c.ControlKey(int16(kmsg.Fetch), func(kmsg.Request) (kmsg.Response, error, bool) {
		if !stuck.Load() {
			c.DropControl()
			return nil, nil, false
		}
		c.KeepControl()
		return nil, nil, true
	})
	release = func() { stuck.Store(false) }
	t.Cleanup(release)
	return release
}

// TestDeadLettersContextAndClose: every call honours its ctx; Close waits
// for the calls in progress, cancels them when its ctx ends, and refuses
// later calls.
func TestDeadLettersContextAndClose(t *testing.T) {
	t.Parallel()
	c := pubCluster(t, map[string]int32{"cx": 1, "cx.dlt": 1})
	dlWrite(t, c, "cx.dlt", dlDead{body: "a", src: "cx"}, dlDead{body: "b", src: "cx"})
	d := dlNew(t, c, "cx")
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := d.List(cancelled, broker.DeadLetterQuery{}); !errors.Is(err, context.Canceled) {
		t.Errorf("List(cancelled) = %v; want an error wrapping context.Canceled", err)
	}
	if _, err := d.Count(cancelled, broker.DeadLetterFilter{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Count(cancelled) = %v; want an error wrapping context.Canceled", err)
	}
	if _, err := d.Redrive(cancelled, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Redrive(cancelled) = %v; want an error wrapping context.Canceled", err)
	}
	if _, err := d.Purge(cancelled, broker.DeadLetterSelection{All: true}, false); !errors.Is(err, context.Canceled) {
		t.Errorf("Purge(cancelled) = %v; want an error wrapping context.Canceled", err)
	}

	release := dlStuckFetches(t, c)
	short, cancelShort := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancelShort()
	if _, err := d.Count(short, broker.DeadLetterFilter{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Count against a broker that does not answer fetches = %v; want an error wrapping context.DeadlineExceeded", err)
	}
	listed := make(chan error, 1)
	go func() {
		_, err := d.List(context.Background(), broker.DeadLetterQuery{})
		listed <- err
	}()
	time.Sleep(200 * time.Millisecond) // let the List reach its fetch
	closeCtx, cancelClose := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancelClose()
	if err := d.Close(closeCtx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close with a call stuck = %v; want an error wrapping context.DeadlineExceeded", err)
	}
	select {
	case err := <-listed:
		if err == nil {
			t.Error("a List cut short by Close returned nil")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the List did not return within 5s of Close's ctx ending")
	}
	release()
	if _, err := d.Count(dlCtx(t), broker.DeadLetterFilter{}); !errors.Is(err, franz.ErrDeadLettersClosed) {
		t.Errorf("Count after Close = %v; want an error wrapping ErrDeadLettersClosed", err)
	}
	if err := d.Close(context.Background()); err != nil {
		t.Errorf("second Close = %v; want nil", err)
	}
}

// TestDeadLettersOfASource: a Source's DeadLetters works before the first
// Receive and after Close, as the kafka-go adapter's does; the Source's
// Close ends a call stuck in progress when its ctx ends.
func TestDeadLettersOfASource(t *testing.T) {
	t.Parallel()
	c := pubCluster(t, map[string]int32{"sd": 1, "sd.dlt": 1})
	dlWrite(t, c, "sd.dlt", dlDead{body: "a", src: "sd"}, dlDead{body: "b", src: "sd"})
	src, err := franz.NewSource(franz.Config{Brokers: c.ListenAddrs(), GroupID: "g-sd", Topic: "sd"})
	if err != nil {
		t.Fatalf("NewSource: %v", err)
	}
	dl := src.DeadLetters()
	if n, err := dl.Count(dlCtx(t), broker.DeadLetterFilter{}); n != 2 || err != nil {
		t.Fatalf("Count before Receive = %d, %v; want 2", n, err)
	}

	release := dlStuckFetches(t, c)
	listed := make(chan error, 1)
	go func() {
		_, err := dl.List(context.Background(), broker.DeadLetterQuery{})
		listed <- err
	}()
	time.Sleep(200 * time.Millisecond) // let the List reach its fetch
	closeCtx, cancelClose := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancelClose()
	if err := franz.CloseSourceDeadLettersForTest(closeCtx, src); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("the Source's close of its dead letters with a call stuck = %v; want an error wrapping context.DeadlineExceeded", err)
	}
	select {
	case err := <-listed:
		if err == nil {
			t.Error("a List cut short by the Source's Close returned nil")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the List did not return within 5s of the Source's Close's ctx ending")
	}
	release()
	if err := src.Close(dlCtx(t)); err != nil {
		t.Fatalf("Source.Close: %v", err)
	}
	res, err := src.DeadLetters().Purge(dlCtx(t), broker.DeadLetterSelection{All: true}, false)
	if err != nil || len(res.Done) != 2 {
		t.Fatalf("Purge after the Source's Close = %+v, %v; want both done", res, err)
	}
	if n, err := src.DeadLetters().Count(dlCtx(t), broker.DeadLetterFilter{}); n != 0 || err != nil {
		t.Errorf("Count after Purge = %d, %v; want 0", n, err)
	}
}

// TestDeadLettersTopicRecreated: a dead-letter topic deleted and recreated;
// the progress kept for the old log does not hide the new dead letters.
func TestDeadLettersTopicRecreated(t *testing.T) {
	t.Parallel()
	c := pubCluster(t, map[string]int32{"re": 1, "re.dlt": 1})
	var old []dlDead
	for i := range 4 {
		old = append(old, dlDead{body: "old" + strconv.Itoa(i), src: "re"})
	}
	dlWrite(t, c, "re.dlt", old...)
	d := dlNew(t, c, "re")
	// 0:0 starts the progress, 0:2 is done out of order (a done marker).
	for _, id := range []string{"0:0", "0:2"} {
		if res, err := d.Purge(dlCtx(t), broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: []string{id}}}, false); err != nil || len(res.Done) != 1 {
			t.Fatalf("Purge(%s) = %+v, %v", id, res, err)
		}
	}
	adm, cl := dlAdmin(t, c)
	defer cl.Close()
	if _, err := adm.DeleteTopic(dlCtx(t), "re.dlt"); err != nil {
		t.Fatalf("DeleteTopic: %v", err)
	}
	if _, err := adm.CreateTopic(dlCtx(t), 1, 1, nil, "re.dlt"); err != nil {
		t.Fatalf("CreateTopic: %v", err)
	}
	dlWrite(t, c, "re.dlt", dlDead{body: "new0", src: "re"}, dlDead{body: "new1", src: "re"}, dlDead{body: "new2", src: "re"})
	if n, err := d.Count(dlCtx(t), broker.DeadLetterFilter{}); n != 3 || err != nil {
		t.Fatalf("Count after the topic was recreated = %d, %v; want 3", n, err)
	}
	if res, err := d.Purge(dlCtx(t), broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: []string{"0:1"}}}, false); err != nil || len(res.Done) != 1 {
		t.Fatalf("Purge(0:1) on the new log = %+v, %v", res, err)
	}
	if got := dlBodies(dlListAll(t, dlNew(t, c, "re"), broker.DeadLetterQuery{})); got != "new0,new2" {
		t.Fatalf("List by another DeadLetters = %s; want new0,new2", got)
	}
}

// TestDeadLettersRedriveLargeAndTooLarge: dead letters larger together
// than a request the topic takes are sent back in several; one larger
// alone than the topic's max.message.bytes is skipped with
// kerr.MessageTooLarge and stays, and the others go.
func TestDeadLettersRedriveLargeAndTooLarge(t *testing.T) {
	t.Parallel()
	c := pubCluster(t, map[string]int32{"big.dlt": 1})
	adm, cl := dlAdmin(t, c)
	defer cl.Close()
	limit := "60000"
	if _, err := adm.CreateTopic(dlCtx(t), 1, 1, map[string]*string{"max.message.bytes": &limit}, "big"); err != nil {
		t.Fatal(err)
	}
	const n = 40
	rnd := rand.New(rand.NewPCG(1, 2))
	noise := func(size int) string { // does not compress (kgo compresses batches)
		b := make([]byte, size)
		for i := range b {
			b[i] = byte(rnd.Uint32())
		}
		return string(b)
	}
	var ds []dlDead
	for i := range n {
		body := noise(20 << 10) // three make a batch over the limit
		if i == 7 {
			body = noise(80 << 10) // over the limit alone
		}
		ds = append(ds, dlDead{body: body, src: "big"})
	}
	for i := 0; i < n; i += 2 {
		dlWrite(t, c, "big.dlt", ds[i:i+2]...)
	}
	d := dlNew(t, c, "big")
	res, err := d.Redrive(dlCtx(t), broker.DeadLetterSelection{All: true}, broker.RedriveOptions{})
	if len(res.Done) != n-1 || len(res.Skipped) != 1 || res.Skipped[0].ID != "0:7" || !errors.Is(res.Skipped[0], kerr.MessageTooLarge) || !errors.Is(err, kerr.MessageTooLarge) {
		t.Fatalf("Redrive = %d done, skipped %v, %v; want %d done and 0:7 skipped as too large", len(res.Done), res.Skipped, err, n-1)
	}
	if got := len(pubRead(t, c, "big", n-1)); got != n-1 {
		t.Errorf("the topic holds %d copies; want %d", got, n-1)
	}
	if got := dlListAll(t, d, broker.DeadLetterQuery{BodyLimit: 1}); len(got) != 1 || got[0].ID != "0:7" || got[0].BodySize != 80<<10 {
		t.Errorf("List after Redrive = %v; want only 0:7, whole size %d", got, 80<<10)
	}
}

// TestDeadLettersConcurrentRedrives: two Redrives at once, one of all and
// one by reason: each dead letter reaches the source once or twice, none
// is lost, none is left.
func TestDeadLettersConcurrentRedrives(t *testing.T) {
	t.Parallel()
	c := pubCluster(t, map[string]int32{"cc": 2, "cc.dlt": 2})
	const n = 60
	var ds []dlDead
	for i := range n {
		ds = append(ds, dlDead{part: int32(i % 2), body: "m" + strconv.Itoa(i), src: "cc", srcPart: i % 2})
	}
	dlWrite(t, c, "cc.dlt", ds...)
	d1, d2 := dlNew(t, c, "cc"), dlNew(t, c, "cc")
	errc := make(chan error, 2)
	go func() {
		_, err := d1.Redrive(dlCtx(t), broker.DeadLetterSelection{All: true}, broker.RedriveOptions{})
		errc <- err
	}()
	go func() {
		_, err := d2.Redrive(dlCtx(t), broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{Reason: "m1"}}, broker.RedriveOptions{})
		errc <- err
	}()
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatalf("Redrive = %v", err)
		}
	}
	if left, err := d1.Count(dlCtx(t), broker.DeadLetterFilter{}); left != 0 || err != nil {
		t.Fatalf("Count after both = %d, %v; want 0", left, err)
	}
	adm, cl := dlAdmin(t, c)
	defer cl.Close()
	ends, err := adm.ListEndOffsets(dlCtx(t), "cc")
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	ends.Each(func(o kadm.ListedOffset) { total += int(o.Offset) })
	got := map[string]int{}
	for _, r := range pubRead(t, c, "cc", total) {
		got[string(r.Value)]++
	}
	twice := 0
	for _, d := range ds {
		switch got[d.body] {
		case 1:
		case 2:
			twice++
		default:
			t.Errorf("%s reached the source %d times; want once or twice", d.body, got[d.body])
		}
	}
	t.Logf("%d dead letters, two concurrent Redrives: %d arrived twice", n, twice)
}
