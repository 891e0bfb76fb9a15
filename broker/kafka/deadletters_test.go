package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/kafka"
	"github.com/queuekit/queuekit/retry"
)

// The dead-letter tests run against the Kafka protocol (in-process kfake
// cluster, or QUEUEKIT_KAFKA_BROKERS).

// dlTopics creates a source topic with 4 partitions and its dead-letter
// topic with dltParts partitions.
func (e *env) dlTopics(t testing.TB, name string, dltParts int) string {
	t.Helper()
	topic := fmt.Sprintf("%s-%d-%d", name, os.Getpid(), topicSeq.Add(1))
	e.createTopic(t, topic, partitions)
	e.createTopic(t, topic+".dlt", dltParts)
	return topic
}

func (e *env) createTopic(t testing.TB, topic string, parts int) {
	t.Helper()
	cli, tr := e.client()
	defer tr.CloseIdleConnections()
	resp, err := cli.CreateTopics(context.Background(), &kafkago.CreateTopicsRequest{Topics: []kafkago.TopicConfig{
		{Topic: topic, NumPartitions: parts, ReplicationFactor: 1},
	}})
	if err != nil {
		t.Fatalf("CreateTopics: %v", err)
	}
	if err := resp.Errors[topic]; err != nil {
		t.Fatalf("CreateTopics %s: %v", topic, err)
	}
}

// topicExists asks the cluster's metadata.
func (e *env) topicExists(t testing.TB, topic string) bool {
	t.Helper()
	cli, tr := e.client()
	defer tr.CloseIdleConnections()
	md, err := cli.Metadata(context.Background(), &kafkago.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		t.Fatalf("Metadata: %v", err)
	}
	for _, tp := range md.Topics {
		if tp.Name == topic && tp.Error == nil {
			return true
		}
	}
	return false
}

// dlSpec describes a dead letter written directly to a dead-letter topic,
// as a Source writes one.
type dlSpec struct {
	key, body string
	err       string // "" with noReason
	noReason  bool   // written by someone else: no queuekit headers at all
	source    string // HeaderTopic and HeaderSource
	partition int    // HeaderPartition
	offset    int64
	redriven  int
	extra     map[string]string
}

// writeDeadLetters writes the specs to the dead-letter topic dlt, in order,
// to partition i % parts of it (a round-robin balancer).
func (e *env) writeDeadLetters(t testing.TB, dlt string, specs []dlSpec) {
	t.Helper()
	p, err := kafka.NewPublisher(kafka.PublisherConfig{Brokers: e.brokers, Topic: dlt, BatchSize: 1000,
		BatchTimeout: time.Millisecond, Balancer: &kafkago.RoundRobin{}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	msgs := make([]*broker.Message, 0, len(specs))
	for _, s := range specs {
		h := map[string]string{}
		for k, v := range s.extra {
			h[k] = v
		}
		if !s.noReason {
			r := broker.Reason{Err: s.err, Attempts: 3, Source: s.source, Time: time.Now().Add(-time.Minute)}
			h = r.Header(h)
			h[kafka.HeaderTopic] = s.source
			h[kafka.HeaderPartition] = strconv.Itoa(s.partition)
			h[kafka.HeaderOffset] = strconv.FormatInt(s.offset, 10)
		}
		if s.redriven > 0 {
			h[broker.HeaderRedriven] = strconv.Itoa(s.redriven)
		}
		msgs = append(msgs, &broker.Message{Key: []byte(s.key), Body: []byte(s.body), Header: h})
	}
	for len(msgs) > 0 {
		n := min(len(msgs), 5000)
		if err := p.Publish(context.Background(), dlt, msgs[:n]...); err != nil {
			t.Fatalf("Publish dead letters: %v", err)
		}
		msgs = msgs[n:]
	}
}

// specs returns n dead letters of topic with error "boom <i>".
func specs(topic string, n int) []dlSpec {
	out := make([]dlSpec, n)
	for i := range out {
		out[i] = dlSpec{key: "k" + strconv.Itoa(i), body: "body-" + strconv.Itoa(i), err: "boom " + strconv.Itoa(i),
			source: topic, partition: i % partitions, offset: int64(i)}
	}
	return out
}

func newDeadLetters(t testing.TB, e *env, topic string) *kafka.DeadLetters {
	t.Helper()
	d, err := kafka.NewDeadLetters(kafka.DeadLetterConfig{Brokers: e.brokers, Topic: topic, Logger: quietLogger()})
	if err != nil {
		t.Fatalf("NewDeadLetters: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := d.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return d
}

func dlCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func listAll(t testing.TB, d broker.DeadLetters, q broker.DeadLetterQuery) []broker.DeadLetter {
	t.Helper()
	var out []broker.DeadLetter
	for {
		page, err := d.List(dlCtx(t), q)
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		out = append(out, page.Items...)
		if page.Next == "" {
			return out
		}
		q.Cursor = page.Next
	}
}

func ids(dls []broker.DeadLetter) []string {
	out := make([]string, len(dls))
	for i, d := range dls {
		out[i] = d.ID
	}
	return out
}

func count(t testing.TB, d broker.DeadLetters, f broker.DeadLetterFilter) int {
	t.Helper()
	n, err := d.Count(dlCtx(t), f)
	if err != nil {
		t.Fatalf("Count: %v", err)
	}
	return n
}

// readTopic reads every record of every partition of topic.
func (e *env) readTopic(t testing.TB, topic string, parts int) []kafkago.Message {
	t.Helper()
	ends := map[int]int64{}
	cli, tr := e.client()
	defer tr.CloseIdleConnections()
	var reqs []kafkago.OffsetRequest
	for p := range parts {
		reqs = append(reqs, kafkago.LastOffsetOf(p))
	}
	resp, err := cli.ListOffsets(context.Background(), &kafkago.ListOffsetsRequest{Topics: map[string][]kafkago.OffsetRequest{topic: reqs}})
	if err != nil {
		t.Fatalf("ListOffsets: %v", err)
	}
	for _, p := range resp.Topics[topic] {
		ends[p.Partition] = p.LastOffset
	}
	var out []kafkago.Message
	for p := range parts {
		if ends[p] == 0 {
			continue
		}
		r := kafkago.NewReader(kafkago.ReaderConfig{Brokers: e.brokers, Topic: topic, Partition: p, MaxWait: 50 * time.Millisecond})
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		for {
			m, err := r.FetchMessage(ctx)
			if err != nil {
				cancel()
				r.Close()
				t.Fatalf("read %s partition %d: %v", topic, p, err)
			}
			out = append(out, m)
			if m.Offset+1 >= ends[p] {
				break
			}
		}
		cancel()
		r.Close()
	}
	return out
}

func header(m kafkago.Message, k string) (string, bool) {
	for _, h := range m.Headers {
		if h.Key == k {
			return string(h.Value), true
		}
	}
	return "", false
}

func TestDeadLettersConfig(t *testing.T) {
	long := strings.Repeat("a", 240)
	for _, c := range []struct {
		name string
		cfg  kafka.DeadLetterConfig
	}{
		{"no brokers", kafka.DeadLetterConfig{Topic: "t"}},
		{"url broker", kafka.DeadLetterConfig{Brokers: []string{"kafka://u:p@h:1"}, Topic: "t"}},
		{"no topic", kafka.DeadLetterConfig{Brokers: []string{"h:1"}}},
		{"bad topic", kafka.DeadLetterConfig{Brokers: []string{"h:1"}, Topic: "a b"}},
		{"dlt is topic", kafka.DeadLetterConfig{Brokers: []string{"h:1"}, Topic: "t", DeadLetterTopic: "t"}},
		{"dlt too long for its done topic", kafka.DeadLetterConfig{Brokers: []string{"h:1"}, Topic: long}},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := kafka.NewDeadLetters(c.cfg)
			if !errors.Is(err, broker.ErrInvalidConfig) {
				t.Fatalf("NewDeadLetters = %v; want ErrInvalidConfig", err)
			}
			if strings.Contains(err.Error(), "u:p") {
				t.Fatalf("error shows credentials: %v", err)
			}
		})
	}
}

// A real consumer dead-letters records; List shows them with their reasons
// and positions, twice alike, and leaves the topic as it was.
func TestDeadLettersListShowsWhatTheSourceDeadLettered(t *testing.T) {
	e := newEnv(t)
	topic := e.topic(t, "dl-list")
	e.produce(t, topic, 0, 6, func(i int) string { return "key-" + itoa(i) })
	src := newSource(t, e.config(topic, "g-dl-list"))
	startMember(t, src, handlerFunc(func(m *broker.Message) error {
		if n, _ := strconv.Atoi(string(m.Body)); n%2 == 1 {
			return retry.Permanent(errors.New("bad order " + string(m.Body)))
		}
		return nil
	}))
	dl := src.DeadLetters()
	waitFor(t, "3 dead letters", 20*time.Second, func() bool {
		n, err := dl.Count(context.Background(), broker.DeadLetterFilter{})
		return err == nil && n == 3
	})
	first := listAll(t, dl, broker.DeadLetterQuery{})
	if len(first) != 3 {
		t.Fatalf("List = %d items; want 3", len(first))
	}
	for i, d := range first {
		if d.ID != "0:"+itoa(i) {
			t.Errorf("item %d ID = %q; want 0:%d", i, d.ID, i)
		}
		if !d.HasReason || !strings.HasPrefix(d.Reason.Err, "bad order ") || !d.Reason.Permanent || d.Reason.Source != topic || d.Reason.Time.IsZero() {
			t.Errorf("item %d reason = %+v (has %v)", i, d.Reason, d.HasReason)
		}
		body := string(d.Message.Body)
		if "bad order "+body != d.Reason.Err || string(d.Message.Key) != "key-"+body {
			t.Errorf("item %d: body %q key %q reason %q", i, body, d.Message.Key, d.Reason.Err)
		}
		if d.Partition < 0 || d.Partition >= partitions || d.Offset < 0 {
			t.Errorf("item %d: Partition %d Offset %d; want the source position", i, d.Partition, d.Offset)
		}
		if d.Message.Header[kafka.HeaderTopic] != topic {
			t.Errorf("item %d: headers %v", i, d.Message.Header)
		}
	}
	second := listAll(t, dl, broker.DeadLetterQuery{})
	if !reflect.DeepEqual(first, second) {
		t.Fatalf("second List differs:\n%+v\n%+v", first, second)
	}
	if n := count(t, dl, broker.DeadLetterFilter{Reason: "BAD ORDER 3"}); n != 1 {
		t.Fatalf("Count(reason BAD ORDER 3) = %d; want 1", n)
	}
}

type handlerFunc func(m *broker.Message) error

func (h handlerFunc) Handle(_ context.Context, m *broker.Message) error { return h(m) }

func TestDeadLettersListPagesAndFilters(t *testing.T) {
	e := newEnv(t)
	topic := e.dlTopics(t, "dl-page", 3)
	sp := specs(topic, 25)
	sp[7].body = strings.Repeat("é", 20) // 40 bytes
	e.writeDeadLetters(t, topic+".dlt", sp)
	d := newDeadLetters(t, e, topic)

	all := listAll(t, d, broker.DeadLetterQuery{Limit: 1000})
	if len(all) != 25 {
		t.Fatalf("List = %d; want 25", len(all))
	}
	// By partition, then offset.
	for i := 1; i < len(all); i++ {
		p0, o0 := splitID(t, all[i-1].ID)
		p1, o1 := splitID(t, all[i].ID)
		if p1 < p0 || p1 == p0 && o1 <= o0 {
			t.Fatalf("items out of order: %s then %s", all[i-1].ID, all[i].ID)
		}
	}
	var pages [][]string
	q := broker.DeadLetterQuery{Limit: 10}
	for {
		page, err := d.List(dlCtx(t), q)
		if err != nil {
			t.Fatal(err)
		}
		pages = append(pages, ids(page.Items))
		if page.Next == "" {
			break
		}
		q.Cursor = page.Next
	}
	if len(pages) != 3 || len(pages[0]) != 10 || len(pages[1]) != 10 || len(pages[2]) != 5 {
		t.Fatalf("pages of 10: %v", pages)
	}
	if got := slices.Concat(pages...); !slices.Equal(got, ids(all)) {
		t.Fatalf("pages = %v; want %v", got, ids(all))
	}
	// Body preview: cut without splitting a rune, BodySize whole.
	page, err := d.List(dlCtx(t), broker.DeadLetterQuery{DeadLetterFilter: broker.DeadLetterFilter{Reason: "boom 7"}, BodyLimit: 5})
	if err != nil || len(page.Items) != 1 {
		t.Fatalf("List(boom 7) = %v, %v", page, err)
	}
	if it := page.Items[0]; string(it.Message.Body) != "éé" || it.BodySize != 40 {
		t.Fatalf("preview %q size %d; want \"éé\" 40", it.Message.Body, it.BodySize)
	}
	// Filters: ids, source, time.
	want := []string{all[3].ID, all[20].ID}
	got := listAll(t, d, broker.DeadLetterQuery{DeadLetterFilter: broker.DeadLetterFilter{IDs: []string{all[20].ID, all[3].ID, "9:9", "x"}}})
	if !slices.Equal(ids(got), want) {
		t.Fatalf("List(ids) = %v; want %v", ids(got), want)
	}
	if n := count(t, d, broker.DeadLetterFilter{Source: topic}); n != 25 {
		t.Fatalf("Count(source) = %d", n)
	}
	if n := count(t, d, broker.DeadLetterFilter{Source: "other"}); n != 0 {
		t.Fatalf("Count(other source) = %d", n)
	}
	if n := count(t, d, broker.DeadLetterFilter{After: time.Now()}); n != 0 {
		t.Fatalf("Count(after now) = %d", n)
	}
	if n := count(t, d, broker.DeadLetterFilter{Before: time.Now()}); n != 25 {
		t.Fatalf("Count(before now) = %d", n)
	}
	// Bad queries.
	for _, c := range []struct {
		q    broker.DeadLetterQuery
		want error
	}{
		{broker.DeadLetterQuery{Cursor: "nonsense"}, broker.ErrInvalidConfig},
		{broker.DeadLetterQuery{Limit: -1}, broker.ErrInvalidConfig},
		{broker.DeadLetterQuery{Limit: broker.MaxListLimit + 1}, broker.ErrInvalidConfig},
		{broker.DeadLetterQuery{Cursor: cursorOf(t, d, 99)}, broker.ErrDeadLetterNotFound},
	} {
		if _, err := d.List(dlCtx(t), c.q); !errors.Is(err, c.want) {
			t.Errorf("List(%+v) = %v; want %v", c.q, err, c.want)
		}
	}
}

// cursorOf makes a cursor for a partition the topic does not have: the
// cursor of a one-item page, with its partition digit replaced.
func cursorOf(t *testing.T, d broker.DeadLetters, part int) string {
	t.Helper()
	page, err := d.List(dlCtx(t), broker.DeadLetterQuery{Limit: 1})
	if err != nil || page.Next == "" {
		t.Fatalf("List(limit 1) = %+v, %v", page, err)
	}
	return kafka.CursorForTest(part, 0)
}

func splitID(t testing.TB, id string) (int, int64) {
	t.Helper()
	ps, os, ok := strings.Cut(id, ":")
	p, err1 := strconv.Atoi(ps)
	o, err2 := strconv.ParseInt(os, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		t.Fatalf("ID %q is not <partition>:<offset>", id)
	}
	return p, o
}

func TestDeadLettersRedriveByID(t *testing.T) {
	e := newEnv(t)
	topic := e.dlTopics(t, "dl-redrive", 1)
	sp := specs(topic, 5)
	sp[2].partition = 3
	sp[2].extra = map[string]string{"trace": "abc"}
	sp[2].redriven = 1
	e.writeDeadLetters(t, topic+".dlt", sp)
	d := newDeadLetters(t, e, topic)

	res, err := d.Redrive(dlCtx(t), broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: []string{"0:2"}}}, broker.RedriveOptions{})
	if err != nil || !slices.Equal(res.Done, []string{"0:2"}) {
		t.Fatalf("Redrive(0:2) = %+v, %v", res, err)
	}
	got := e.readTopic(t, topic, partitions)
	if len(got) != 1 {
		t.Fatalf("source holds %d records; want 1", len(got))
	}
	m := got[0]
	if m.Partition != 3 || string(m.Key) != "k2" || string(m.Value) != "body-2" {
		t.Fatalf("copy: partition %d key %q body %q; want partition 3 (HeaderPartition), k2, body-2", m.Partition, m.Key, m.Value)
	}
	for k, want := range map[string]string{broker.HeaderRedriven: "2", broker.HeaderRedrivenFrom: "0:2", "trace": "abc"} {
		if v, _ := header(m, k); v != want {
			t.Errorf("copy header %s = %q; want %q", k, v, want)
		}
	}
	for _, k := range []string{broker.HeaderError, broker.HeaderAttempts, broker.HeaderSource, broker.HeaderFailedAt,
		kafka.HeaderTopic, kafka.HeaderPartition, kafka.HeaderOffset} {
		if v, ok := header(m, k); ok {
			t.Errorf("copy keeps header %s = %q", k, v)
		}
	}
	if _, ok := header(m, broker.HeaderRedrivenAt); !ok {
		t.Error("copy has no redriven-at header")
	}
	// Gone from the dead letters, and not redriven twice.
	if left := ids(listAll(t, d, broker.DeadLetterQuery{})); !slices.Equal(left, []string{"0:0", "0:1", "0:3", "0:4"}) {
		t.Fatalf("List after redrive = %v", left)
	}
	res, err = d.Redrive(dlCtx(t), broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: []string{"0:2"}}}, broker.RedriveOptions{})
	if !errors.Is(err, broker.ErrDeadLetterNotFound) || !slices.Equal(res.Missing, []string{"0:2"}) || len(res.Done) != 0 {
		t.Fatalf("second Redrive(0:2) = %+v, %v; want it missing", res, err)
	}
	// A new DeadLetters (another process) sees the same.
	if n := count(t, newDeadLetters(t, e, topic), broker.DeadLetterFilter{}); n != 4 {
		t.Fatalf("Count from a new DeadLetters = %d; want 4", n)
	}
	// Then all: the rest, once; the copy of 0:0 (key k0, HeaderPartition 0)
	// goes to partition 0.
	res, err = d.Redrive(dlCtx(t), broker.DeadLetterSelection{All: true}, broker.RedriveOptions{})
	if err != nil || !slices.Equal(res.Done, []string{"0:0", "0:1", "0:3", "0:4"}) {
		t.Fatalf("Redrive(all) = %+v, %v", res, err)
	}
	if n := count(t, d, broker.DeadLetterFilter{}); n != 0 {
		t.Fatalf("Count after redrive all = %d", n)
	}
	if got := e.readTopic(t, topic, partitions); len(got) != 5 {
		t.Fatalf("source holds %d records; want 5", len(got))
	}
	// All handled from the start: the group's offset covers them.
	if c := e.committed(t, topic+".dlt"+kafka.DeadLetterGroupSuffix, topic+".dlt"); c[0] != 5 {
		t.Fatalf("committed = %v; want 5 on partition 0", c)
	}
}

// A redriven copy is consumed as a new message: Attempt 1.
func TestDeadLettersRedrivenCopyStartsAtAttemptOne(t *testing.T) {
	e := newEnv(t)
	topic := e.topic(t, "dl-attempt")
	e.writeDeadLetters(t, topic+".dlt", specs(topic, 1))
	d := newDeadLetters(t, e, topic)
	if _, err := d.Redrive(dlCtx(t), broker.DeadLetterSelection{All: true}, broker.RedriveOptions{}); err != nil {
		t.Fatal(err)
	}
	got := make(chan broker.Message, 1)
	startMember(t, newSource(t, e.config(topic, "g-dl-attempt")), handlerFunc(func(m *broker.Message) error {
		select {
		case got <- *m:
		default:
		}
		return nil
	}))
	select {
	case m := <-got:
		if m.Attempt != 1 || m.Header[broker.HeaderRedriven] != "1" || m.Header[broker.HeaderAttempts] != "" {
			t.Fatalf("redriven copy: Attempt %d headers %v", m.Attempt, m.Header)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the redriven copy was not consumed")
	}
}

func TestDeadLettersRedriveLimitAndSources(t *testing.T) {
	e := newEnv(t)
	topic := e.dlTopics(t, "dl-limit", 1)
	other := e.dlTopics(t, "dl-dest", 1)
	sp := []dlSpec{
		{key: "a", body: "limit", err: "x", source: topic, redriven: 3},      // 0:0
		{key: "b", body: "foreign", noReason: true},                          // 0:1
		{key: "c", body: "gone", err: "x", source: topic + "-deleted"},       // 0:2
		{key: "d", body: "fine", err: "x", source: topic, partition: 1},      // 0:3
		{key: "e", body: "limit-2", err: "x", source: topic, redriven: 2},    // 0:4
		{key: "f", body: "bad name", err: "x", source: "no good", offset: 1}, // 0:5
	}
	e.writeDeadLetters(t, topic+".dlt", sp)
	d := newDeadLetters(t, e, topic)

	res, err := d.Redrive(dlCtx(t), broker.DeadLetterSelection{All: true}, broker.RedriveOptions{})
	if !slices.Equal(res.Done, []string{"0:3", "0:4"}) {
		t.Fatalf("Done = %v; want [0:3 0:4]", res.Done)
	}
	skipped := map[string]error{}
	for _, s := range res.Skipped {
		skipped[s.ID] = s
	}
	for id, want := range map[string]error{"0:0": broker.ErrRedriveLimit, "0:1": broker.ErrNoSource, "0:2": broker.ErrNoSource, "0:5": broker.ErrNoSource} {
		if !errors.Is(skipped[id], want) {
			t.Errorf("skipped %s = %v; want %v", id, skipped[id], want)
		}
	}
	if !errors.Is(err, broker.ErrRedriveLimit) || !errors.Is(err, broker.ErrNoSource) {
		t.Errorf("Redrive error = %v; want it to wrap ErrRedriveLimit and ErrNoSource", err)
	}
	if e.topicExists(t, topic+"-deleted") {
		t.Fatal("Redrive created the missing source topic")
	}
	// The skipped ones stay, in order.
	if left := ids(listAll(t, d, broker.DeadLetterQuery{})); !slices.Equal(left, []string{"0:0", "0:1", "0:2", "0:5"}) {
		t.Fatalf("List = %v", left)
	}
	// A higher limit, or none, lets 0:0 go; a destination takes the
	// foreign one.
	if res, err := d.Redrive(dlCtx(t), broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: []string{"0:0"}}}, broker.RedriveOptions{MaxRedrives: -1}); err != nil || len(res.Done) != 1 {
		t.Fatalf("Redrive(no limit) = %+v, %v", res, err)
	}
	if res, err := d.Redrive(dlCtx(t), broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: []string{"0:1"}}}, broker.RedriveOptions{Destination: other}); err != nil || len(res.Done) != 1 {
		t.Fatalf("Redrive(destination) = %+v, %v", res, err)
	}
	if got := e.readTopic(t, other, partitions); len(got) != 1 || string(got[0].Value) != "foreign" {
		t.Fatalf("destination holds %v", got)
	}
	// A destination that does not exist, or a bad name, fails the call.
	if _, err := d.Redrive(dlCtx(t), broker.DeadLetterSelection{All: true}, broker.RedriveOptions{Destination: topic + "-nope"}); !errors.Is(err, broker.ErrNoSource) {
		t.Fatalf("Redrive(missing destination) = %v; want ErrNoSource", err)
	}
	if _, err := d.Redrive(dlCtx(t), broker.DeadLetterSelection{All: true}, broker.RedriveOptions{Destination: "a b"}); !errors.Is(err, broker.ErrInvalidConfig) {
		t.Fatalf("Redrive(bad destination) = %v; want ErrInvalidConfig", err)
	}
	if e.topicExists(t, topic+"-nope") {
		t.Fatal("Redrive created the destination")
	}
	if n := count(t, d, broker.DeadLetterFilter{}); n != 2 {
		t.Fatalf("Count = %d; want 2", n)
	}
}

func TestDeadLettersUnknownIDs(t *testing.T) {
	e := newEnv(t)
	topic := e.dlTopics(t, "dl-ids", 2)
	e.writeDeadLetters(t, topic+".dlt", specs(topic, 4)) // 0:0 0:1 1:0 1:1
	d := newDeadLetters(t, e, topic)
	if _, err := d.Purge(dlCtx(t), broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: []string{"1:1"}}}, false); err != nil {
		t.Fatal(err)
	}
	bad := []string{"x", "0", "0:", ":1", "-1:0", "0:-1", "0:01", "2:0", "0:2", "0:999", "1:1", "0:1"}
	res, err := d.Redrive(dlCtx(t), broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: bad}}, broker.RedriveOptions{})
	if !errors.Is(err, broker.ErrDeadLetterNotFound) {
		t.Fatalf("Redrive(bad ids) = %v; want ErrDeadLetterNotFound", err)
	}
	if !slices.Equal(res.Done, []string{"0:1"}) {
		t.Fatalf("Done = %v; want the one good id", res.Done)
	}
	if !slices.Equal(res.Missing, bad[:len(bad)-1]) {
		t.Fatalf("Missing = %v; want %v", res.Missing, bad[:len(bad)-1])
	}
	if left := ids(listAll(t, d, broker.DeadLetterQuery{})); !slices.Equal(left, []string{"0:0", "1:0"}) {
		t.Fatalf("List = %v", left)
	}
	if res, err := d.Purge(dlCtx(t), broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: []string{"nope"}}}, false); !errors.Is(err, broker.ErrDeadLetterNotFound) || len(res.Missing) != 1 {
		t.Fatalf("Purge(nope) = %+v, %v", res, err)
	}
}

func TestDeadLettersSelections(t *testing.T) {
	e := newEnv(t)
	topic := e.dlTopics(t, "dl-sel", 1)
	sp := specs(topic, 10)
	for i := range sp {
		if i%3 == 0 {
			sp[i].err = "alpha " + itoa(i)
		}
	}
	e.writeDeadLetters(t, topic+".dlt", sp)
	d := newDeadLetters(t, e, topic)
	ctx := dlCtx(t)

	// Bad selections.
	if _, err := d.Redrive(ctx, broker.DeadLetterSelection{}, broker.RedriveOptions{}); !errors.Is(err, broker.ErrEmptySelection) {
		t.Fatalf("Redrive(empty) = %v", err)
	}
	if _, err := d.Purge(ctx, broker.DeadLetterSelection{}, false); !errors.Is(err, broker.ErrEmptySelection) {
		t.Fatalf("Purge(empty) = %v", err)
	}
	if _, err := d.Purge(ctx, broker.DeadLetterSelection{All: true, Max: -1}, false); !errors.Is(err, broker.ErrInvalidConfig) {
		t.Fatalf("Purge(max -1) = %v", err)
	}
	// Dry runs change nothing.
	res, err := d.Purge(ctx, broker.DeadLetterSelection{All: true}, true)
	if err != nil || len(res.Done) != 10 || !res.DryRun {
		t.Fatalf("Purge(dry) = %+v, %v", res, err)
	}
	res, err = d.Redrive(ctx, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{DryRun: true})
	if err != nil || len(res.Done) != 10 || !res.DryRun {
		t.Fatalf("Redrive(dry) = %+v, %v", res, err)
	}
	if n := count(t, d, broker.DeadLetterFilter{}); n != 10 {
		t.Fatalf("Count after dry runs = %d", n)
	}
	if got := e.readTopic(t, topic, partitions); len(got) != 0 {
		t.Fatalf("a dry run wrote %d records", len(got))
	}
	// Purge by filter: not a prefix (0:0, 0:3, 0:6, 0:9).
	res, err = d.Purge(ctx, broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{Reason: "ALPHA"}}, false)
	if err != nil || !slices.Equal(res.Done, []string{"0:0", "0:3", "0:6", "0:9"}) {
		t.Fatalf("Purge(alpha) = %+v, %v", res, err)
	}
	if n := count(t, d, broker.DeadLetterFilter{}); n != 6 {
		t.Fatalf("Count after purge = %d; want 6", n)
	}
	if n := count(t, newDeadLetters(t, e, topic), broker.DeadLetterFilter{Reason: "alpha"}); n != 0 {
		t.Fatalf("Count(alpha) from a new DeadLetters = %d; want 0", n)
	}
	// Max: the oldest two.
	res, err = d.Redrive(ctx, broker.DeadLetterSelection{All: true, Max: 2}, broker.RedriveOptions{})
	if err != nil || !slices.Equal(res.Done, []string{"0:1", "0:2"}) {
		t.Fatalf("Redrive(max 2) = %+v, %v", res, err)
	}
	// The rest; the purged ones are not redriven.
	res, err = d.Redrive(ctx, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{})
	if err != nil || !slices.Equal(res.Done, []string{"0:4", "0:5", "0:7", "0:8"}) {
		t.Fatalf("Redrive(all) = %+v, %v", res, err)
	}
	if n := count(t, d, broker.DeadLetterFilter{}); n != 0 {
		t.Fatalf("Count = %d; want 0", n)
	}
	got := e.readTopic(t, topic, partitions)
	var bodies []string
	for _, m := range got {
		bodies = append(bodies, string(m.Value))
	}
	slices.Sort(bodies)
	if want := []string{"body-1", "body-2", "body-4", "body-5", "body-7", "body-8"}; !slices.Equal(bodies, want) {
		t.Fatalf("source holds %v; want %v", bodies, want)
	}
	// Everything is done: the group's offset covers it all.
	if c := e.committed(t, topic+".dlt"+kafka.DeadLetterGroupSuffix, topic+".dlt"); c[0] != 10 {
		t.Fatalf("committed = %v; want 10", c)
	}
}

func TestDeadLettersContextAndClose(t *testing.T) {
	e := newEnv(t)
	topic := e.dlTopics(t, "dl-ctx", 1)
	e.writeDeadLetters(t, topic+".dlt", specs(topic, 3))
	d := newDeadLetters(t, e, topic)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := d.List(ctx, broker.DeadLetterQuery{}); !errors.Is(err, context.Canceled) {
		t.Errorf("List(cancelled) = %v", err)
	}
	if _, err := d.Count(ctx, broker.DeadLetterFilter{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Count(cancelled) = %v", err)
	}
	if _, err := d.Redrive(ctx, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Redrive(cancelled) = %v", err)
	}
	if _, err := d.Purge(ctx, broker.DeadLetterSelection{All: true}, false); !errors.Is(err, context.Canceled) {
		t.Errorf("Purge(cancelled) = %v", err)
	}
	if n := count(t, d, broker.DeadLetterFilter{}); n != 3 {
		t.Fatalf("Count = %d; want 3", n)
	}

	// The dead-letter topic missing: a clear error.
	gone, err := kafka.NewDeadLetters(kafka.DeadLetterConfig{Brokers: e.brokers, Topic: topic + "-none"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gone.Count(dlCtx(t), broker.DeadLetterFilter{}); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("Count of a missing dead-letter topic = %v", err)
	}
	gone.Close(context.Background())

	// A call stuck on a broker that does not answer: a deadline ends it,
	// and so does Close's ctx.
	e.needKfake(t)
	// Fetches are left unanswered until the test ends.
	var stuck atomic.Bool
	stuck.Store(true)
	defer stuck.Store(false)
	e.cluster.ControlKey(int16(kmsg.Fetch), func(kmsg.Request) (kmsg.Response, error, bool) {
		if !stuck.Load() {
			return nil, nil, false
		}
		e.cluster.KeepControl()
		return nil, nil, true
	})
	short, cancelShort := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancelShort()
	if _, err := d.Count(short, broker.DeadLetterFilter{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Count on a stuck broker = %v; want DeadlineExceeded", err)
	}
	d2, err := kafka.NewDeadLetters(kafka.DeadLetterConfig{Brokers: e.brokers, Topic: topic, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := d2.List(context.Background(), broker.DeadLetterQuery{})
		errc <- err
	}()
	time.Sleep(200 * time.Millisecond) // let the List reach the fetch
	cctx, ccancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer ccancel()
	if err := d2.Close(cctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close with a stuck call = %v; want DeadlineExceeded", err)
	}
	select {
	case err := <-errc:
		if err == nil {
			t.Error("List cut by Close returned nil")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("List did not return after Close's ctx ended")
	}
	if _, err := d2.Count(context.Background(), broker.DeadLetterFilter{}); !errors.Is(err, kafka.ErrDeadLettersClosed) {
		t.Errorf("Count after Close = %v; want ErrDeadLettersClosed", err)
	}
	if err := d2.Close(context.Background()); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

// A dead-letter topic deleted and recreated: the progress kept for the old
// log does not hide the new dead letters.
func TestDeadLettersTopicRecreated(t *testing.T) {
	e := newEnv(t)
	topic := e.dlTopics(t, "dl-recreate", 1)
	dlt := topic + ".dlt"
	e.writeDeadLetters(t, dlt, specs(topic, 4))
	d := newDeadLetters(t, e, topic)
	// 0:2 is done out of order: a done marker.
	if res, err := d.Purge(dlCtx(t), broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: []string{"0:2"}}}, false); err != nil || len(res.Done) != 1 {
		t.Fatalf("Purge(0:2) = %+v, %v", res, err)
	}
	cli, tr := e.client()
	defer tr.CloseIdleConnections()
	resp, err := cli.DeleteTopics(context.Background(), &kafkago.DeleteTopicsRequest{Topics: []string{dlt}})
	if err != nil || resp.Errors[dlt] != nil {
		t.Fatalf("DeleteTopics = %v, %v", resp, err)
	}
	waitFor(t, "the dead-letter topic gone", 10*time.Second, func() bool { return !e.topicExists(t, dlt) })
	e.createTopic(t, dlt, 1)
	fresh := specs(topic, 3)
	for i := range fresh {
		fresh[i].body = "new-" + itoa(i)
	}
	e.writeDeadLetters(t, dlt, fresh)
	if n := count(t, d, broker.DeadLetterFilter{}); n != 3 {
		t.Fatalf("Count after the topic was recreated = %d; want 3", n)
	}
	// Progress on the new log: out of order (a done marker), then seen by
	// another DeadLetters.
	if res, err := d.Purge(dlCtx(t), broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: []string{"0:1"}}}, false); err != nil || len(res.Done) != 1 {
		t.Fatalf("Purge(0:1) = %+v, %v", res, err)
	}
	if left := ids(listAll(t, newDeadLetters(t, e, topic), broker.DeadLetterQuery{})); !slices.Equal(left, []string{"0:0", "0:2"}) {
		t.Fatalf("List = %v; want [0:0 0:2]", left)
	}
}

// Large dead letters are sent back in requests a topic accepts (a batch of
// 256 records of 40 KiB is 10 MiB, over the default max.message.bytes).
func TestDeadLettersRedriveLargeRecords(t *testing.T) {
	e := newEnv(t)
	topic := e.dlTopics(t, "dl-large", 1)
	sp := specs(topic, 300)
	for i := range sp {
		sp[i].body = strings.Repeat(strconv.Itoa(i%10), 40<<10)
		sp[i].partition = 0
	}
	for i := 0; i < len(sp); i += 20 {
		e.writeDeadLetters(t, topic+".dlt", sp[i:min(i+20, len(sp))])
	}
	d := newDeadLetters(t, e, topic)
	res, err := d.Redrive(dlCtx(t), broker.DeadLetterSelection{All: true}, broker.RedriveOptions{})
	if err != nil || len(res.Done) != 300 {
		t.Fatalf("Redrive = %d done, %v", len(res.Done), err)
	}
	if got := e.records(t, topic); got != 300 {
		t.Fatalf("source holds %d records; want 300", got)
	}
}

// Two Redrives at once: each dead letter reaches the source once or twice,
// and none is left.
func TestDeadLettersConcurrentRedrives(t *testing.T) {
	e := newEnv(t)
	topic := e.dlTopics(t, "dl-conc", 2)
	sp := specs(topic, 600)
	for i := range sp {
		if i%7 == 0 {
			sp[i].err = "seven " + itoa(i)
		}
	}
	e.writeDeadLetters(t, topic+".dlt", sp)
	d1, d2 := newDeadLetters(t, e, topic), newDeadLetters(t, e, topic)
	errc := make(chan error, 2)
	go func() {
		_, err := d1.Redrive(dlCtx(t), broker.DeadLetterSelection{All: true}, broker.RedriveOptions{})
		errc <- err
	}()
	go func() {
		_, err := d2.Redrive(dlCtx(t), broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{Reason: "seven"}}, broker.RedriveOptions{})
		errc <- err
	}()
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatalf("Redrive = %v", err)
		}
	}
	got := map[string]int{}
	for _, m := range e.readTopic(t, topic, partitions) {
		got[string(m.Value)]++
	}
	twice := 0
	for _, s := range sp {
		switch got[s.body] {
		case 1:
		case 2:
			twice++
		default:
			t.Errorf("%s reached the source %d times", s.body, got[s.body])
		}
	}
	t.Logf("600 dead letters, two concurrent Redrives: %d arrived twice", twice)
	if n := count(t, d1, broker.DeadLetterFilter{}); n != 0 {
		t.Fatalf("Count = %d; want 0", n)
	}
}

// Source.DeadLetters shares nothing with the Source: it works before the
// first Receive and after Close.
func TestDeadLettersOfAClosedSource(t *testing.T) {
	e := newEnv(t)
	topic := e.topic(t, "dl-closed")
	e.writeDeadLetters(t, topic+".dlt", specs(topic, 2))
	src := newSource(t, e.config(topic, "g-dl-closed"))
	if n := count(t, src.DeadLetters(), broker.DeadLetterFilter{}); n != 2 {
		t.Fatalf("Count before Receive = %d; want 2", n)
	}
	if err := src.Close(dlCtx(t)); err != nil {
		t.Fatal(err)
	}
	res, err := src.DeadLetters().Purge(dlCtx(t), broker.DeadLetterSelection{All: true}, false)
	if err != nil || len(res.Done) != 2 {
		t.Fatalf("Purge after Close = %+v, %v", res, err)
	}
	if n := count(t, src.DeadLetters(), broker.DeadLetterFilter{}); n != 0 {
		t.Fatalf("Count after Purge = %d; want 0", n)
	}
}
