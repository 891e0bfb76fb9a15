package brokertest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// The dead-letter cases check broker.DeadLetters, on the DeadLetters of a
// source from Fixture.NewSource that implements broker.DeadLetterSource; each
// is skipped, naming the interface, when the source does not. They make dead
// letters the way the runtime does, with Delivery.DeadLetter, and wait for
// them with Count, polling up to Harness.Timeout: a broker may show a dead
// letter, or the effect of a Redrive or Purge, some time after the call
// returned (a Kafka reader catching up).

// unknownID is an id that no adapter gives a dead letter.
const unknownID = "brokertest-no-such-dead-letter"

// dlEnv is a case's source and its dead letters.
type dlEnv struct {
	*env
	src broker.Source
	dl  broker.DeadLetters
}

// deadLetters returns a new source of the fixture and its dead letters, or
// skips the case when the source is not a broker.DeadLetterSource.
func (e *env) deadLetters() *dlEnv {
	e.Helper()
	src := e.source(1)
	ds, ok := src.(broker.DeadLetterSource)
	if !ok {
		e.Skipf("source %T does not implement broker.DeadLetterSource", src)
	}
	dl := ds.DeadLetters()
	if dl == nil {
		e.Fatalf("DeadLetters() of source %T returned nil", src)
	}
	return &dlEnv{env: e, src: src, dl: dl}
}

// deadLetterNext receives the next message and dead-letters it with the
// reason that reason returns for it; it returns the message as received.
func (e *dlEnv) deadLetterNext(reason func(m *broker.Message) broker.Reason) broker.Message {
	e.Helper()
	d := e.receive(e.src, "a message was published to be dead-lettered")
	m := *d.Message()
	ctx, cancel := context.WithTimeout(context.Background(), e.h.Timeout)
	defer cancel()
	if err := d.DeadLetter(ctx, reason(&m)); err != nil {
		e.Fatalf("DeadLetter(%s) = %v; want nil", describe(&m), err)
	}
	return m
}

// makeDead publishes n messages "<prefix>-<i>" and dead-letters them, with
// the reason that reason returns for index i; it waits until Count shows n.
func (e *dlEnv) makeDead(prefix string, n int, reason func(i int, m *broker.Message) broker.Reason) {
	e.Helper()
	e.publish(msgs(prefix, n)...)
	for range n {
		e.deadLetterNext(func(m *broker.Message) broker.Reason {
			i, err := strconv.Atoi(m.Header["x-test-index"])
			if err != nil {
				e.Fatalf("received %s without its x-test-index header", describe(m))
			}
			return reason(i, m)
		})
	}
	e.waitCount(broker.DeadLetterFilter{}, n, fmt.Sprintf("%d messages were dead-lettered", n))
}

// simpleReason is the reason of makeDead's dead letters in most cases.
func simpleReason(i int, m *broker.Message) broker.Reason {
	return broker.Reason{Err: fmt.Sprintf("brokertest: failure %d", i), Attempts: m.Attempt, Source: m.Topic, Time: time.Now()}
}

func (e *dlEnv) count(f broker.DeadLetterFilter) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), e.h.Timeout)
	defer cancel()
	return e.dl.Count(ctx, f)
}

// waitCount polls Count(f) until it is n.
func (e *dlEnv) waitCount(f broker.DeadLetterFilter, n int, why string) {
	e.Helper()
	var (
		got int
		err error
	)
	e.eventually(fmt.Sprintf("%s: Count(%+v) must be %d", why, f, n), func() bool {
		got, err = e.count(f)
		return err == nil && got == n
	}, func() string { return fmt.Sprintf("Count = %d, error %v", got, err) })
}

// list returns every dead letter matching q's filter, following the pages.
func (e *dlEnv) list(q broker.DeadLetterQuery) []broker.DeadLetter {
	e.Helper()
	var out []broker.DeadLetter
	for pages := 0; ; pages++ {
		if pages > 1000 {
			e.Fatalf("List(%+v) did not reach its last page after 1000 pages", q)
		}
		ctx, cancel := context.WithTimeout(context.Background(), e.h.Timeout)
		p, err := e.dl.List(ctx, q)
		cancel()
		if err != nil {
			e.Fatalf("List(%+v) = %v; want nil", q, err)
		}
		out = append(out, p.Items...)
		if p.Next == "" {
			return out
		}
		if p.Next == q.Cursor {
			e.Fatalf("List(%+v) returned its own cursor as Next; a listing must move on", q)
		}
		q.Cursor = p.Next
	}
}

func dlIDs(ds []broker.DeadLetter) []string {
	out := make([]string, len(ds))
	for i := range ds {
		out[i] = ds[i].ID
	}
	return out
}

// byBody returns the dead letter whose body is body, failing the case when
// there is none.
func (e *dlEnv) byBody(ds []broker.DeadLetter, body string) broker.DeadLetter {
	e.Helper()
	for _, d := range ds {
		if string(d.Message.Body) == body {
			return d
		}
	}
	e.Fatalf("no dead letter has body %q among %d: %v", body, len(ds), dlBodies(ds))
	return broker.DeadLetter{}
}

func dlBodies(ds []broker.DeadLetter) []string {
	out := make([]string, len(ds))
	for i := range ds {
		out[i] = string(ds[i].Message.Body)
	}
	return out
}

func (e *dlEnv) redrive(sel broker.DeadLetterSelection, opts broker.RedriveOptions) (broker.DeadLetterResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), e.h.Timeout)
	defer cancel()
	return e.dl.Redrive(ctx, sel, opts)
}

func (e *dlEnv) purge(sel broker.DeadLetterSelection, dryRun bool) (broker.DeadLetterResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), e.h.Timeout)
	defer cancel()
	return e.dl.Purge(ctx, sel, dryRun)
}

func ids(id ...string) broker.DeadLetterSelection {
	return broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: id}}
}

// sameSet reports whether a and b hold the same strings, each once.
func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b) && len(slices.Compact(a)) == len(a)
}

// testDeadLetterList: List shows each dead letter with a unique id, its
// reason (error text, attempts, source, time), its headers and its body (a
// preview cut to BodyLimit, with BodySize whole); listing twice gives the
// same dead letters in the same order, and Count is unchanged: List
// consumes nothing.
func testDeadLetterList(e *env) {
	de := e.deadLetters()
	const n = 4
	start := time.Now()
	de.makeDead("dl-list", n, func(i int, m *broker.Message) broker.Reason {
		return broker.Reason{Err: fmt.Sprintf("brokertest: failure %d", i), Attempts: i + 1, Source: m.Topic, Permanent: i == 0, Time: time.Now()}
	})
	end := time.Now()
	first := de.list(broker.DeadLetterQuery{})
	if len(first) != n {
		e.Fatalf("List returned %d dead letters (%v); want the %d dead-lettered", len(first), dlBodies(first), n)
	}
	seenID := map[string]bool{}
	for i := range n {
		body := string(msg("dl-list", i).Body)
		d := de.byBody(first, body)
		if d.ID == "" || seenID[d.ID] {
			e.Errorf("dead letter %q has id %q; want a non-empty id of its own", body, d.ID)
		}
		seenID[d.ID] = true
		r := d.Reason
		if !d.HasReason || r.Err != fmt.Sprintf("brokertest: failure %d", i) || r.Attempts != i+1 || r.Permanent != (i == 0) {
			e.Errorf("dead letter %q: HasReason %v, Reason %+v; want the reason it was dead-lettered with (failure %d, %d attempts, permanent %v)", body, d.HasReason, r, i, i+1, i == 0)
		}
		if r.Source == "" || (e.f.Destination != "" && r.Source != e.f.Destination) {
			e.Errorf("dead letter %q has Reason.Source %q; want the source destination %q", body, r.Source, e.f.Destination)
		}
		if r.Time.Before(start.Add(-time.Second)) || r.Time.After(end.Add(time.Second)) {
			e.Errorf("dead letter %q has Reason.Time %v; want when it was dead-lettered (between %v and %v)", body, r.Time, start, end)
		}
		if got := d.Message.Header["x-test-index"]; got != strconv.Itoa(i) {
			e.Errorf("dead letter %q has x-test-index %q; want its original headers kept (%d)", body, got, i)
		}
		if d.BodySize != len(body) || d.Redriven != 0 {
			e.Errorf("dead letter %q has BodySize %d, Redriven %d; want %d, 0", body, d.BodySize, d.Redriven, len(body))
		}
	}
	second := de.list(broker.DeadLetterQuery{})
	if !slices.Equal(dlIDs(second), dlIDs(first)) {
		e.Errorf("a second List returned %v; want the same dead letters in the same order as the first, %v (List consumes nothing)", dlIDs(second), dlIDs(first))
	}
	if got, err := de.count(broker.DeadLetterFilter{}); got != n || err != nil {
		e.Errorf("Count after two Lists = %d, %v; want %d (List consumes nothing)", got, err, n)
	}
	preview := de.list(broker.DeadLetterQuery{BodyLimit: 3})
	for _, d := range preview {
		if len(d.Message.Body) != 3 || d.BodySize != len("dl-list-0") {
			e.Errorf("List with BodyLimit 3: dead letter %s has a body of %d bytes (%q) and BodySize %d; want 3 bytes and the whole size %d", d.ID, len(d.Message.Body), d.Message.Body, d.BodySize, len("dl-list-0"))
		}
	}
	e.nothing(de.src, "dead letters are not redelivered to the source by List")
}

// testDeadLetterPaging: pages of List, followed by their Next cursor, cover
// every dead letter exactly once, none longer than Limit, and end with an
// empty Next.
func testDeadLetterPaging(e *env) {
	de := e.deadLetters()
	const n, limit = 7, 3
	de.makeDead("dl-page", n, simpleReason)
	var got []string
	q := broker.DeadLetterQuery{Limit: limit}
	for pages := 1; ; pages++ {
		if pages > n+1 {
			e.Fatalf("List with Limit %d had not ended after %d pages (%d items, %d distinct); want the %d dead letters in at most %d pages", limit, pages-1, len(got), len(slices.Compact(slices.Sorted(slices.Values(got)))), n, n)
		}
		ctx, cancel := context.WithTimeout(context.Background(), e.h.Timeout)
		p, err := de.dl.List(ctx, q)
		cancel()
		if err != nil {
			e.Fatalf("List page %d (%+v) = %v; want nil", pages, q, err)
		}
		if len(p.Items) > limit {
			e.Errorf("List page %d has %d items; want at most Limit %d", pages, len(p.Items), limit)
		}
		got = append(got, dlIDs(p.Items)...)
		if p.Next == "" {
			break
		}
		q.Cursor = p.Next
	}
	all := de.list(broker.DeadLetterQuery{Limit: broker.MaxListLimit})
	if len(all) != n || !slices.Equal(got, dlIDs(all)) {
		e.Errorf("pages of %d listed %v; want every dead letter once, in the order of one List: %v", limit, got, dlIDs(all))
	}
}

// testDeadLetterFilter: List and Count select by reason text
// (case-insensitive substring), by source and by ids, combined with AND.
func testDeadLetterFilter(e *env) {
	de := e.deadLetters()
	const n = 6
	source := ""
	de.makeDead("dl-filter", n, func(i int, m *broker.Message) broker.Reason {
		source = m.Topic
		text := "brokertest: bad payload"
		if i%2 == 0 {
			text = "brokertest: Timeout talking to the database"
		}
		return broker.Reason{Err: text, Attempts: 1, Source: m.Topic, Time: time.Now()}
	})
	all := de.list(broker.DeadLetterQuery{})
	if len(all) != n {
		e.Fatalf("List = %v; want the %d dead letters", dlBodies(all), n)
	}
	var timeouts []string
	for _, d := range all {
		if strings.Contains(d.Reason.Err, "Timeout") {
			timeouts = append(timeouts, d.ID)
		}
	}
	for _, c := range []struct {
		name string
		f    broker.DeadLetterFilter
		want []string
	}{
		{"reason text in another case", broker.DeadLetterFilter{Reason: "TIMEOUT talking"}, timeouts},
		{"the source", broker.DeadLetterFilter{Source: source}, dlIDs(all)},
		{"another source", broker.DeadLetterFilter{Source: source + "-brokertest-other"}, nil},
		{"ids and reason", broker.DeadLetterFilter{IDs: []string{all[0].ID, all[1].ID}, Reason: "payload"}, payloadOf(all[:2])},
	} {
		got := de.list(broker.DeadLetterQuery{DeadLetterFilter: c.f})
		if !slices.Equal(dlIDs(got), c.want) && len(got)+len(c.want) > 0 {
			e.Errorf("List filtered by %s (%+v) = %v; want %v", c.name, c.f, dlIDs(got), c.want)
		}
		if cnt, err := de.count(c.f); cnt != len(c.want) || err != nil {
			e.Errorf("Count filtered by %s (%+v) = %d, %v; want %d", c.name, c.f, cnt, err, len(c.want))
		}
	}
	if len(timeouts) != n/2 {
		e.Errorf("%d dead letters say Timeout; want %d", len(timeouts), n/2)
	}
}

// payloadOf returns the ids of the dead letters of ds that failed with a
// bad payload.
func payloadOf(ds []broker.DeadLetter) []string {
	var out []string
	for _, d := range ds {
		if strings.Contains(d.Reason.Err, "payload") {
			out = append(out, d.ID)
		}
	}
	return out
}

// testDeadLetterRedrive: Redrive sends a dead letter back to its source with
// a fresh delivery budget (its next delivery has Attempt 1), without the
// reason headers, with HeaderRedriven 1 and HeaderRedrivenFrom its id, and
// removes it; dead-lettered again, it is a new dead letter with Redriven 1,
// and a second redrive gives HeaderRedriven 2.
func testDeadLetterRedrive(e *env) {
	de := e.deadLetters()
	e.publish(msg("dl-redrive", 0))
	d := e.receive(de.src, "a message was published")
	if e.h.Capabilities.DeliveryCount {
		e.requeue(d) // so that the dead letter had 2 attempts
		d = e.receive(de.src, "a requeued message must be delivered again")
	}
	ctx, cancel := context.WithTimeout(context.Background(), e.h.Timeout)
	defer cancel()
	m := d.Message()
	if err := d.DeadLetter(ctx, broker.Reason{Err: "brokertest: failed", Attempts: m.Attempt, Source: m.Topic, Time: time.Now()}); err != nil {
		e.Fatalf("DeadLetter = %v; want nil", err)
	}
	de.waitCount(broker.DeadLetterFilter{}, 1, "a message was dead-lettered")
	prev := ""
	for round := 1; round <= 2; round++ {
		dead := de.list(broker.DeadLetterQuery{})
		if len(dead) != 1 {
			e.Fatalf("round %d: List = %v; want one dead letter", round, dlBodies(dead))
		}
		id := dead[0].ID
		if dead[0].Redriven != round-1 {
			e.Errorf("round %d: the dead letter has Redriven %d; want %d", round, dead[0].Redriven, round-1)
		}
		if id == prev {
			e.Errorf("round %d: the dead letter has the id %q of the dead letter redriven before; want an id of its own", round, id)
		}
		prev = id
		res, err := de.redrive(ids(id), broker.RedriveOptions{})
		if err != nil || !slices.Equal(res.Done, []string{id}) || len(res.Skipped)+len(res.Missing) != 0 || res.DryRun {
			e.Fatalf("round %d: Redrive(%q) = %+v, %v; want it done, nil", round, id, res, err)
		}
		d := e.receive(de.src, fmt.Sprintf("round %d: a redriven dead letter must come back to its source", round))
		m := d.Message()
		if string(m.Body) != "dl-redrive-0" || m.Header["x-test-index"] != "0" {
			e.Fatalf("round %d: after Redrive received %s with headers %v; want the dead letter's body and headers", round, describe(m), m.Header)
		}
		if m.Attempt != 1 {
			e.Errorf("round %d: the redriven message arrived with Attempt %d; want 1 (a redrive resets the delivery budget)", round, m.Attempt)
		}
		if got := m.Header[broker.HeaderRedriven]; got != strconv.Itoa(round) {
			e.Errorf("round %d: the redriven message has %s = %q; want %d", round, broker.HeaderRedriven, got, round)
		}
		if got := m.Header[broker.HeaderRedrivenFrom]; got != id {
			e.Errorf("round %d: the redriven message has %s = %q; want the dead letter's id %q", round, broker.HeaderRedrivenFrom, got, id)
		}
		if got, ok := m.Header[broker.HeaderError]; ok {
			e.Errorf("round %d: the redriven message has %s = %q; want the reason headers removed", round, broker.HeaderError, got)
		}
		de.waitCount(broker.DeadLetterFilter{}, 0, fmt.Sprintf("round %d: a redriven dead letter must leave the dead letters", round))
		if round == 2 {
			e.ack(d)
			break
		}
		ctx, cancel := context.WithTimeout(context.Background(), e.h.Timeout)
		err = d.DeadLetter(ctx, broker.Reason{Err: "brokertest: failed again", Attempts: m.Attempt, Source: m.Topic, Time: time.Now()})
		cancel()
		if err != nil {
			e.Fatalf("DeadLetter of the redriven message = %v; want nil", err)
		}
		de.waitCount(broker.DeadLetterFilter{}, 1, "the redriven message was dead-lettered again")
	}
	e.nothing(de.src, "a redriven message is delivered once")
}

// testDeadLetterLimit: a dead letter whose HeaderRedriven count reached the
// limit (broker.DefaultMaxRedrives by default) is skipped with an error
// wrapping broker.ErrRedriveLimit and stays; one below it is redriven; a
// higher MaxRedrives lets the first one go.
func testDeadLetterLimit(e *env) {
	de := e.deadLetters()
	atLimit := msg("dl-limit", 0)
	atLimit.Header[broker.HeaderRedriven] = strconv.Itoa(broker.DefaultMaxRedrives)
	below := msg("dl-limit", 1)
	below.Header[broker.HeaderRedriven] = strconv.Itoa(broker.DefaultMaxRedrives - 1)
	e.publish(atLimit, below)
	for range 2 {
		de.deadLetterNext(func(m *broker.Message) broker.Reason {
			return broker.Reason{Err: "brokertest: failed", Attempts: 1, Source: m.Topic, Time: time.Now()}
		})
	}
	de.waitCount(broker.DeadLetterFilter{}, 2, "2 messages were dead-lettered")
	dead := de.list(broker.DeadLetterQuery{})
	stuck, goes := de.byBody(dead, "dl-limit-0"), de.byBody(dead, "dl-limit-1")
	if stuck.Redriven != broker.DefaultMaxRedrives {
		e.Errorf("dead letter %s has Redriven %d; want %d, from its %s header", stuck.ID, stuck.Redriven, broker.DefaultMaxRedrives, broker.HeaderRedriven)
	}
	res, err := de.redrive(broker.DeadLetterSelection{All: true}, broker.RedriveOptions{})
	if !errors.Is(err, broker.ErrRedriveLimit) {
		e.Errorf("Redrive(All) with a dead letter at the limit = %v; want an error wrapping broker.ErrRedriveLimit", err)
	}
	if !slices.Equal(res.Done, []string{goes.ID}) || len(res.Skipped) != 1 || res.Skipped[0].ID != stuck.ID || !errors.Is(res.Skipped[0], broker.ErrRedriveLimit) {
		e.Fatalf("Redrive(All) = %+v; want %s done and %s skipped with ErrRedriveLimit (redriven %d times, limit %d)", res, goes.ID, stuck.ID, broker.DefaultMaxRedrives, broker.DefaultMaxRedrives)
	}
	d := e.receive(de.src, "the dead letter below the limit was redriven")
	if m := d.Message(); string(m.Body) != "dl-limit-1" || m.Header[broker.HeaderRedriven] != strconv.Itoa(broker.DefaultMaxRedrives) {
		e.Errorf("after Redrive received %s with %s = %q; want dl-limit-1 with %d", describe(m), broker.HeaderRedriven, m.Header[broker.HeaderRedriven], broker.DefaultMaxRedrives)
	}
	e.ack(d)
	de.waitCount(broker.DeadLetterFilter{}, 1, "the dead letter at the limit must stay")
	if left := de.list(broker.DeadLetterQuery{}); len(left) != 1 || left[0].ID != stuck.ID {
		e.Fatalf("after Redrive List = %v; want only %s, at the limit", dlIDs(left), stuck.ID)
	}
	e.nothing(de.src, "a dead letter at the redrive limit must not be sent back")
	res, err = de.redrive(ids(stuck.ID), broker.RedriveOptions{MaxRedrives: broker.DefaultMaxRedrives + 1})
	if err != nil || !slices.Equal(res.Done, []string{stuck.ID}) {
		e.Fatalf("Redrive(%q) with MaxRedrives %d = %+v, %v; want it done", stuck.ID, broker.DefaultMaxRedrives+1, res, err)
	}
	d = e.receive(de.src, "a higher MaxRedrives lets the dead letter go")
	if got := d.Message().Header[broker.HeaderRedriven]; got != strconv.Itoa(broker.DefaultMaxRedrives+1) {
		e.Errorf("the redriven message has %s = %q; want %d", broker.HeaderRedriven, got, broker.DefaultMaxRedrives+1)
	}
	e.ack(d)
}

// testDeadLetterNoSource: a dead letter whose source does not exist is
// skipped with an error wrapping broker.ErrNoSource and stays (a redrive
// never loses a message); with RedriveOptions.Destination it is sent there.
func testDeadLetterNoSource(e *env) {
	de := e.deadLetters()
	e.publish(msg("dl-nosource", 0))
	gone := fmt.Sprintf("brokertest-gone-%d", time.Now().UnixNano())
	var topic string
	de.deadLetterNext(func(m *broker.Message) broker.Reason {
		topic = m.Topic
		return broker.Reason{Err: "brokertest: failed", Attempts: 1, Source: gone, Time: time.Now()}
	})
	de.waitCount(broker.DeadLetterFilter{}, 1, "a message was dead-lettered")
	res, err := de.redrive(broker.DeadLetterSelection{All: true}, broker.RedriveOptions{})
	if !errors.Is(err, broker.ErrNoSource) || len(res.Done) != 0 || len(res.Skipped) != 1 || !errors.Is(res.Skipped[0], broker.ErrNoSource) {
		e.Errorf("Redrive of a dead letter from %q, which does not exist = %+v, %v; want it skipped with ErrNoSource", gone, res, err)
	}
	if n, err := de.count(broker.DeadLetterFilter{}); n != 1 || err != nil {
		e.Fatalf("after Redrive skipped it, Count = %d, %v; want 1: a dead letter that cannot be sent back stays", n, err)
	}
	if dead := de.list(broker.DeadLetterQuery{}); len(dead) != 1 || string(dead[0].Message.Body) != "dl-nosource-0" {
		e.Fatalf("after Redrive skipped it, List = %v; want the dead letter still there", dlBodies(dead))
	}
	res, err = de.redrive(broker.DeadLetterSelection{All: true}, broker.RedriveOptions{Destination: topic})
	if err != nil || len(res.Done) != 1 {
		e.Fatalf("Redrive with Destination %q = %+v, %v; want it done", topic, res, err)
	}
	d := e.receive(de.src, "a dead letter redriven to a Destination arrives there")
	if m := d.Message(); string(m.Body) != "dl-nosource-0" || m.Attempt != 1 {
		e.Errorf("redriven to %q: %s; want dl-nosource-0 with Attempt 1", topic, describe(m))
	}
	e.ack(d)
	de.waitCount(broker.DeadLetterFilter{}, 0, "a dead letter redriven to a Destination leaves the dead letters")
}

// testDeadLetterDryRun: Redrive and Purge with DryRun report what they would
// do (every selected id, DryRun true) and change nothing.
func testDeadLetterDryRun(e *env) {
	de := e.deadLetters()
	const n = 3
	de.makeDead("dl-dry", n, simpleReason)
	before := dlIDs(de.list(broker.DeadLetterQuery{}))
	res, err := de.redrive(broker.DeadLetterSelection{All: true}, broker.RedriveOptions{DryRun: true})
	if err != nil || !res.DryRun || !sameSet(res.Done, before) {
		e.Errorf("Redrive(All, DryRun) = %+v, %v; want DryRun and every id %v done, nil", res, err, before)
	}
	e.nothing(de.src, "Redrive with DryRun must send nothing back")
	res, err = de.purge(broker.DeadLetterSelection{All: true}, true)
	if err != nil || !res.DryRun || !sameSet(res.Done, before) {
		e.Errorf("Purge(All, dry run) = %+v, %v; want DryRun and every id %v done, nil", res, err, before)
	}
	if got, err := de.count(broker.DeadLetterFilter{}); got != n || err != nil {
		e.Errorf("after dry runs Count = %d, %v; want %d", got, err, n)
	}
	if after := dlIDs(de.list(broker.DeadLetterQuery{})); !slices.Equal(after, before) {
		e.Errorf("after dry runs List = %v; want %v unchanged", after, before)
	}
}

// testDeadLetterPurge: Purge deletes exactly the selected dead letters (by
// id; All with Max, oldest first; All), Count agrees, and nothing is sent
// back to the source.
func testDeadLetterPurge(e *env) {
	de := e.deadLetters()
	const n = 5
	de.makeDead("dl-purge", n, simpleReason)
	all := dlIDs(de.list(broker.DeadLetterQuery{}))
	res, err := de.purge(ids(all[1], all[3]), false)
	if err != nil || !sameSet(res.Done, []string{all[1], all[3]}) || res.DryRun {
		e.Fatalf("Purge(%q, %q) = %+v, %v; want both done", all[1], all[3], res, err)
	}
	de.waitCount(broker.DeadLetterFilter{}, n-2, "2 of 5 dead letters were purged")
	want := []string{all[0], all[2], all[4]}
	if got := dlIDs(de.list(broker.DeadLetterQuery{})); !slices.Equal(got, want) {
		e.Fatalf("after Purge List = %v; want the others, in order: %v", got, want)
	}
	res, err = de.purge(broker.DeadLetterSelection{All: true, Max: 1}, false)
	if err != nil || !slices.Equal(res.Done, []string{all[0]}) {
		e.Fatalf("Purge(All, Max 1) = %+v, %v; want the oldest, %s, done", res, err, all[0])
	}
	de.waitCount(broker.DeadLetterFilter{}, n-3, "a third dead letter was purged")
	res, err = de.purge(broker.DeadLetterSelection{All: true}, false)
	if err != nil || !sameSet(res.Done, []string{all[2], all[4]}) {
		e.Fatalf("Purge(All) = %+v, %v; want the two left done", res, err)
	}
	de.waitCount(broker.DeadLetterFilter{}, 0, "every dead letter was purged")
	if left := de.list(broker.DeadLetterQuery{}); len(left) != 0 {
		e.Errorf("after Purge(All) List = %v; want nothing", dlIDs(left))
	}
	e.nothing(de.src, "purged dead letters must not be sent back to the source")
}

// testDeadLetterUnknown: ids that are not dead letters are reported in
// Missing, with an error wrapping broker.ErrDeadLetterNotFound, and change
// nothing; known ids given with them are still handled.
func testDeadLetterUnknown(e *env) {
	de := e.deadLetters()
	de.makeDead("dl-unknown", 2, simpleReason)
	all := dlIDs(de.list(broker.DeadLetterQuery{}))
	res, err := de.redrive(ids(unknownID), broker.RedriveOptions{})
	if !errors.Is(err, broker.ErrDeadLetterNotFound) || !slices.Equal(res.Missing, []string{unknownID}) || len(res.Done) != 0 {
		e.Errorf("Redrive(%q) = %+v, %v; want it missing, with an error wrapping ErrDeadLetterNotFound", unknownID, res, err)
	}
	res, err = de.purge(ids(unknownID), false)
	if !errors.Is(err, broker.ErrDeadLetterNotFound) || !slices.Equal(res.Missing, []string{unknownID}) || len(res.Done) != 0 {
		e.Errorf("Purge(%q) = %+v, %v; want it missing, with an error wrapping ErrDeadLetterNotFound", unknownID, res, err)
	}
	if got, err := de.count(broker.DeadLetterFilter{}); got != 2 || err != nil {
		e.Fatalf("after Redrive and Purge of an unknown id Count = %d, %v; want 2 (nothing changed)", got, err)
	}
	e.nothing(de.src, "a Redrive of an unknown id sends nothing")
	res, err = de.purge(ids(all[0], unknownID), false)
	if !errors.Is(err, broker.ErrDeadLetterNotFound) || !slices.Equal(res.Done, []string{all[0]}) || !slices.Equal(res.Missing, []string{unknownID}) {
		e.Errorf("Purge(%q, %q) = %+v, %v; want %s done and %s missing, with an error wrapping ErrDeadLetterNotFound", all[0], unknownID, res, err, all[0], unknownID)
	}
	de.waitCount(broker.DeadLetterFilter{}, 1, "the known id given with an unknown one was purged")
}

// testDeadLetterEmptySelection: Redrive and Purge refuse a selection that
// selects nothing by intent (no ids, no filter, All false; Max alone is not
// a selection) with an error wrapping broker.ErrEmptySelection, and change
// nothing.
func testDeadLetterEmptySelection(e *env) {
	de := e.deadLetters()
	de.makeDead("dl-empty", 1, simpleReason)
	if _, err := de.redrive(broker.DeadLetterSelection{}, broker.RedriveOptions{}); !errors.Is(err, broker.ErrEmptySelection) {
		e.Errorf("Redrive of an empty selection = %v; want an error wrapping broker.ErrEmptySelection", err)
	}
	if _, err := de.purge(broker.DeadLetterSelection{}, false); !errors.Is(err, broker.ErrEmptySelection) {
		e.Errorf("Purge of an empty selection = %v; want an error wrapping broker.ErrEmptySelection", err)
	}
	if _, err := de.purge(broker.DeadLetterSelection{Max: 5}, false); !errors.Is(err, broker.ErrEmptySelection) {
		e.Errorf("Purge of a selection with only Max = %v; want an error wrapping broker.ErrEmptySelection", err)
	}
	if got, err := de.count(broker.DeadLetterFilter{}); got != 1 || err != nil {
		e.Errorf("after refused selections Count = %d, %v; want 1", got, err)
	}
	e.nothing(de.src, "a refused Redrive sends nothing")
}

// foreign returns a second fixture of the case (a second Setup) and a
// source on it, for the cases that need a destination other than the
// case's own that exists on the same broker; it skips the case when either
// fixture leaves Destination empty.
func (e *dlEnv) foreign() (Fixture, broker.Source) {
	e.Helper()
	if e.f.Destination == "" {
		e.Skip("Fixture.Destination is empty: the case needs the name of the source destination")
	}
	f2 := e.h.Setup(e.T)
	if f2.Destination == "" || f2.NewSource == nil {
		e.Skip("the second fixture of Setup has no Destination or NewSource")
	}
	if f2.Destination == e.f.Destination {
		e.Fatalf("two fixtures of one case have the same Destination %q; Setup must give a fresh destination each time", f2.Destination)
	}
	src := f2.NewSource(e.T, 1)
	if src == nil {
		e.Fatal("Fixture.NewSource of the second fixture returned nil")
	}
	e.Cleanup(func() { src.Close(context.Background()) })
	return f2, src
}

// testDeadLetterForeignSource: headers do not choose where a redrive
// writes. A dead letter whose reason names another destination, one that
// exists on the same broker, is skipped with broker.ErrNoSource and stays;
// nothing arrives in that destination nor in the source. With that
// destination as RedriveOptions.Destination it goes there (which also shows
// that the destination exists and is reachable, so that the skip was not
// for want of it).
func testDeadLetterForeignSource(e *env) {
	de := e.deadLetters()
	f2, other := de.foreign()
	e.publish(msg("dl-foreign", 0))
	de.deadLetterNext(func(m *broker.Message) broker.Reason {
		return broker.Reason{Err: "brokertest: failed", Attempts: 1, Source: f2.Destination, Time: time.Now()}
	})
	de.waitCount(broker.DeadLetterFilter{}, 1, "a message was dead-lettered")
	if dead := de.list(broker.DeadLetterQuery{}); len(dead) != 1 || dead[0].Reason.Source != f2.Destination {
		e.Fatalf("List = %+v; want the dead letter with Reason.Source %q, as it was dead-lettered (a header names the other destination)", dead, f2.Destination)
	}
	for _, dry := range []bool{true, false} {
		res, err := de.redrive(broker.DeadLetterSelection{All: true}, broker.RedriveOptions{DryRun: dry})
		if !errors.Is(err, broker.ErrNoSource) || len(res.Done) != 0 || len(res.Skipped) != 1 || !errors.Is(res.Skipped[0], broker.ErrNoSource) {
			e.Errorf("Redrive(All, DryRun %v) of a dead letter of %q whose reason names %q = %+v, %v; want it skipped with ErrNoSource: headers do not choose where a redrive writes", dry, e.f.Destination, f2.Destination, res, err)
		}
	}
	e.nothing(other, fmt.Sprintf("a dead letter of %q whose headers name %q must not be redriven there", e.f.Destination, f2.Destination))
	e.nothing(de.src, "a dead letter whose reason names another source is skipped, not sent back")
	if n, err := de.count(broker.DeadLetterFilter{}); n != 1 || err != nil {
		e.Fatalf("after Redrive skipped it, Count = %d, %v; want 1: the skipped dead letter stays", n, err)
	}
	res, err := de.redrive(broker.DeadLetterSelection{All: true}, broker.RedriveOptions{Destination: f2.Destination})
	if err != nil || len(res.Done) != 1 {
		e.Fatalf("Redrive with Destination %q (a second fixture of the case) = %+v, %v; want it done (the fixtures of one case must be on the same broker)", f2.Destination, res, err)
	}
	d := e.receive(other, fmt.Sprintf("a dead letter redriven to Destination %q arrives there", f2.Destination))
	if m := d.Message(); string(m.Body) != "dl-foreign-0" {
		e.Errorf("redriven to %q: %s; want dl-foreign-0", f2.Destination, describe(m))
	}
	e.ack(d)
	de.waitCount(broker.DeadLetterFilter{}, 0, "a dead letter redriven to a Destination leaves the dead letters")
}

// refused checks that a Redrive to dest, dry run or not, is refused with an
// error wrapping broker.ErrNoSource or broker.ErrInvalidConfig, redrives
// nothing, and leaves the n dead letters where they are.
func (e *dlEnv) refused(dest, what string, n int) {
	e.Helper()
	for _, dry := range []bool{true, false} {
		res, err := e.redrive(broker.DeadLetterSelection{All: true}, broker.RedriveOptions{Destination: dest, DryRun: dry})
		if !errors.Is(err, broker.ErrNoSource) && !errors.Is(err, broker.ErrInvalidConfig) || len(res.Done) != 0 {
			e.Errorf("Redrive(All, DryRun %v) to Destination %q, %s = %+v, %v; want it refused with an error wrapping broker.ErrNoSource or broker.ErrInvalidConfig, nothing done", dry, dest, what, res, err)
		}
	}
	e.nothing(e.src, fmt.Sprintf("a refused Redrive to %q, %s, sends nothing", dest, what))
	if got, err := e.count(broker.DeadLetterFilter{}); got != n || err != nil {
		e.Fatalf("after a Redrive to %q, %s, Count = %d, %v; want %d (nothing lost)", dest, what, got, err, n)
	}
}

// testDeadLetterMissingDestination: a RedriveOptions.Destination that does
// not exist (a typo) is refused before anything is sent, dry run or not,
// with an error wrapping broker.ErrNoSource or broker.ErrInvalidConfig; the
// dead letters stay.
func testDeadLetterMissingDestination(e *env) {
	de := e.deadLetters()
	const n = 2
	de.makeDead("dl-missing-dest", n, simpleReason)
	base := e.f.Destination
	if base == "" {
		base = "brokertest"
	}
	missing := fmt.Sprintf("%s-brokertest-missing-%d", base, time.Now().UnixNano())
	de.refused(missing, "which does not exist", n)
}

// testDeadLetterSelfDestination: the dead-letter destination itself
// (Fixture.DeadLetterDestination) as RedriveOptions.Destination is refused
// before anything is sent, dry run or not, with an error wrapping
// broker.ErrNoSource or broker.ErrInvalidConfig; the dead letters stay.
func testDeadLetterSelfDestination(e *env) {
	if e.f.DeadLetterDestination == "" {
		e.Skip("Fixture.DeadLetterDestination is empty")
	}
	de := e.deadLetters()
	const n = 2
	de.makeDead("dl-self-dest", n, simpleReason)
	de.refused(e.f.DeadLetterDestination, "the dead-letter destination itself", n)
	if dead := de.list(broker.DeadLetterQuery{}); len(dead) != n {
		e.Errorf("after a Redrive to the dead-letter destination List = %v; want the %d dead letters, once each", dlBodies(dead), n)
	}
}
