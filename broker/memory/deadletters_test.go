package memory_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
)

// deadLetter publishes body to queue, receives it (requeueing it
// attempts-1 times first) and dead-letters it with errText.
func deadLetter(t *testing.T, b *memory.Broker, queue, body, errText string, attempts int) {
	t.Helper()
	publish(t, b, queue, body)
	src := newSource(t, b, queue, 1)
	deadLetterNext(t, src, errText, attempts)
	src.Close(context.Background())
}

// deadLetterNext receives the next message of src (requeueing it
// attempts-1 times first) and dead-letters it with errText.
func deadLetterNext(t *testing.T, src *memory.Source, errText string, attempts int) {
	t.Helper()
	d := receive(t, src)
	for range attempts - 1 {
		settle(t, "Requeue", d.Requeue)
		d = receive(t, src)
	}
	settle(t, "DeadLetter", func(ctx context.Context) error {
		return d.DeadLetter(ctx, broker.Reason{Err: errText, Time: time.Now()})
	})
}

func list(t *testing.T, dl broker.DeadLetters, q broker.DeadLetterQuery) broker.DeadLetterPage {
	t.Helper()
	p, err := dl.List(context.Background(), q)
	if err != nil {
		t.Fatalf("List(%+v) = %v; want nil", q, err)
	}
	return p
}

func ids(p broker.DeadLetterPage) []string {
	out := make([]string, len(p.Items))
	for i, d := range p.Items {
		out[i] = d.ID
	}
	return out
}

func count(t *testing.T, dl broker.DeadLetters, f broker.DeadLetterFilter) int {
	t.Helper()
	n, err := dl.Count(context.Background(), f)
	if err != nil {
		t.Fatalf("Count(%+v) = %v; want nil", f, err)
	}
	return n
}

func TestDeadLettersListShowsReasonsAndChangesNothing(t *testing.T) {
	b := memory.NewBroker()
	defer b.Close()
	start := time.Now()
	deadLetter(t, b, "q", "first", "boom", 2)
	deadLetter(t, b, "q", strings.Repeat("é", 600), "bang", 1)
	end := time.Now()
	dl := b.DeadLettersOf("q")
	before := b.Stats(memory.DeadLetterQueue("q"))

	p := list(t, dl, broker.DeadLetterQuery{})
	if got, want := ids(p), []string{"q.dlq-1", "q.dlq-2"}; !slices.Equal(got, want) || p.Next != "" {
		t.Fatalf("List ids = %v, Next %q; want %v and no next page", got, p.Next, want)
	}
	d := p.Items[0]
	if d.Reason.Err != "boom" || d.Reason.Attempts != 2 || d.Reason.Source != "q" || !d.HasReason ||
		d.Reason.Time.Before(start) || d.Reason.Time.After(end) {
		t.Errorf("dead letter 1 reason = %+v, HasReason %v; want boom, 2 attempts, source q, a time within the test", d.Reason, d.HasReason)
	}
	if d.Partition != -1 || d.Offset != -1 || d.Redriven != 0 || string(d.Message.Body) != "first" || d.BodySize != 5 {
		t.Errorf("dead letter 1 = partition %d offset %d redriven %d body %q size %d; want -1 -1 0 \"first\" 5", d.Partition, d.Offset, d.Redriven, d.Message.Body, d.BodySize)
	}
	// The default preview is 1024 bytes, cut on a rune boundary: 512 é.
	if d := p.Items[1]; len(d.Message.Body) != 1024 || d.BodySize != 1200 || !strings.HasPrefix(strings.Repeat("é", 600), string(d.Message.Body)) {
		t.Errorf("dead letter 2 body preview = %d bytes of %d; want 1024 of 1200, a prefix", len(d.Message.Body), d.BodySize)
	}
	if p := list(t, dl, broker.DeadLetterQuery{BodyLimit: -1}); p.Items[1].BodySize != 1200 || len(p.Items[1].Message.Body) != 1200 {
		t.Errorf("List BodyLimit -1: body %d bytes; want the whole 1200", len(p.Items[1].Message.Body))
	}
	// A caller's change to what List returned does not reach the broker.
	p.Items[0].Message.Header[broker.HeaderError] = "changed"
	p.Items[0].Message.Body[0] = 'X'
	again := list(t, dl, broker.DeadLetterQuery{})
	if !slices.Equal(ids(again), ids(p)) || again.Items[0].Reason.Err != "boom" || string(again.Items[0].Message.Body) != "first" {
		t.Errorf("second List = %v %q %q; want the same dead letters, unchanged", ids(again), again.Items[0].Reason.Err, again.Items[0].Message.Body)
	}
	if n := count(t, dl, broker.DeadLetterFilter{}); n != 2 {
		t.Errorf("Count = %d after two Lists; want 2", n)
	}
	if after := b.Stats(memory.DeadLetterQueue("q")); after != before {
		t.Errorf("dead-letter queue stats after List = %+v; want unchanged %+v", after, before)
	}
	if n := len(b.DeadLetters("q")); n != 2 {
		t.Errorf("DeadLetters(q) = %d messages after List; want 2", n)
	}
}

func TestDeadLettersPagingAndFilters(t *testing.T) {
	b := memory.NewBroker()
	defer b.Close()
	for i := range 7 {
		errText := "bad payload"
		if i%2 == 0 {
			errText = "Timeout talking to db"
		}
		deadLetter(t, b, "q", fmt.Sprint(i), errText, 1)
	}
	dl := b.DeadLettersOf("q")
	var all []string
	cursor := ""
	for pages := 0; ; pages++ {
		if pages > 7 {
			t.Fatalf("List with Limit 3 did not end after %d pages: %v", pages, all)
		}
		p := list(t, dl, broker.DeadLetterQuery{Limit: 3, Cursor: cursor})
		if len(p.Items) > 3 {
			t.Fatalf("List Limit 3 returned %d items", len(p.Items))
		}
		all = append(all, ids(p)...)
		if p.Next == "" {
			break
		}
		cursor = p.Next
	}
	want := []string{"q.dlq-1", "q.dlq-2", "q.dlq-3", "q.dlq-4", "q.dlq-5", "q.dlq-6", "q.dlq-7"}
	if !slices.Equal(all, want) {
		t.Errorf("pages of 3 listed %v; want %v", all, want)
	}
	for _, c := range []struct {
		f    broker.DeadLetterFilter
		want []string
	}{
		{broker.DeadLetterFilter{Reason: "TIMEOUT"}, []string{"q.dlq-1", "q.dlq-3", "q.dlq-5", "q.dlq-7"}},
		{broker.DeadLetterFilter{Reason: "payload", IDs: []string{"q.dlq-1", "q.dlq-2"}}, []string{"q.dlq-2"}},
		{broker.DeadLetterFilter{Source: "q"}, want},
		{broker.DeadLetterFilter{Source: "other"}, nil},
		{broker.DeadLetterFilter{Before: time.Now().Add(-time.Hour)}, nil},
		{broker.DeadLetterFilter{After: time.Now().Add(-time.Hour)}, want},
	} {
		p := list(t, dl, broker.DeadLetterQuery{DeadLetterFilter: c.f})
		if got := ids(p); !slices.Equal(got, c.want) && (len(got) > 0 || len(c.want) > 0) {
			t.Errorf("List(%+v) = %v; want %v", c.f, got, c.want)
		}
		if n := count(t, dl, c.f); n != len(c.want) {
			t.Errorf("Count(%+v) = %d; want %d", c.f, n, len(c.want))
		}
	}
	// A filtered listing pages over the matching ones only.
	p := list(t, dl, broker.DeadLetterQuery{Limit: 2, DeadLetterFilter: broker.DeadLetterFilter{Reason: "timeout"}})
	p2 := list(t, dl, broker.DeadLetterQuery{Limit: 2, Cursor: p.Next, DeadLetterFilter: broker.DeadLetterFilter{Reason: "timeout"}})
	if got := append(ids(p), ids(p2)...); !slices.Equal(got, []string{"q.dlq-1", "q.dlq-3", "q.dlq-5", "q.dlq-7"}) || p2.Next != "" {
		t.Errorf("filtered pages of 2 = %v (next %q); want the 4 timeouts and no next page", got, p2.Next)
	}
}

func TestDeadLettersBadInput(t *testing.T) {
	b := memory.NewBroker()
	defer b.Close()
	deadLetter(t, b, "q", "x", "boom", 1)
	ctx := context.Background()
	dl := b.DeadLettersOf("q")
	for name, err := range map[string]error{
		"List with a bad cursor":     func() error { _, err := dl.List(ctx, broker.DeadLetterQuery{Cursor: "nope"}); return err }(),
		"List with a negative limit": func() error { _, err := dl.List(ctx, broker.DeadLetterQuery{Limit: -1}); return err }(),
		"List over MaxListLimit": func() error {
			_, err := dl.List(ctx, broker.DeadLetterQuery{Limit: broker.MaxListLimit + 1})
			return err
		}(),
		"Purge with a negative max": func() error {
			_, err := dl.Purge(ctx, broker.DeadLetterSelection{All: true, Max: -1}, false)
			return err
		}(),
		"List of an empty queue name": func() error { _, err := b.DeadLettersOf("").List(ctx, broker.DeadLetterQuery{}); return err }(),
		"Count of an empty queue name": func() error {
			_, err := b.DeadLettersOf("").Count(ctx, broker.DeadLetterFilter{})
			return err
		}(),
		"Redrive of an empty queue name": func() error {
			_, err := b.DeadLettersOf("").Redrive(ctx, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{})
			return err
		}(),
	} {
		if !errors.Is(err, broker.ErrInvalidConfig) {
			t.Errorf("%s = %v; want an error wrapping broker.ErrInvalidConfig", name, err)
		}
	}
	for name, f := range map[string]func() error{
		"Redrive": func() error {
			_, err := dl.Redrive(ctx, broker.DeadLetterSelection{}, broker.RedriveOptions{})
			return err
		},
		"Purge": func() error { _, err := dl.Purge(ctx, broker.DeadLetterSelection{Max: 3}, false); return err },
	} {
		if err := f(); !errors.Is(err, broker.ErrEmptySelection) {
			t.Errorf("%s of an empty selection = %v; want an error wrapping broker.ErrEmptySelection", name, err)
		}
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := dl.Count(cancelled, broker.DeadLetterFilter{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Count with a cancelled context = %v; want context.Canceled", err)
	}
	if n := count(t, dl, broker.DeadLetterFilter{}); n != 1 {
		t.Errorf("after the bad calls Count = %d; want 1 (nothing changed)", n)
	}
	// The dead letters of a queue never used: none, and no queue created.
	if n := count(t, b.DeadLettersOf("never"), broker.DeadLetterFilter{}); n != 0 {
		t.Errorf("Count of a queue never used = %d; want 0", n)
	}
	res, err := b.DeadLettersOf("never").Purge(ctx, broker.DeadLetterSelection{All: true}, false)
	if err != nil || len(res.Done) != 0 {
		t.Errorf("Purge All of a queue never used = %+v, %v; want nothing done, nil", res, err)
	}
}

func TestDeadLettersRedrive(t *testing.T) {
	b := memory.NewBroker()
	defer b.Close()
	src := newSource(t, b, "q", 1)
	publish(t, b, "q", "poison")
	deadLetterNext(t, src, "boom", 3)
	dl := src.DeadLetters()

	res, err := dl.Redrive(context.Background(), broker.DeadLetterSelection{All: true}, broker.RedriveOptions{})
	if err != nil || !slices.Equal(res.Done, []string{"q.dlq-1"}) || res.DryRun {
		t.Fatalf("Redrive(All) = %+v, %v; want q.dlq-1 done, nil", res, err)
	}
	if n := count(t, dl, broker.DeadLetterFilter{}); n != 0 || len(b.DeadLetters("q")) != 0 {
		t.Errorf("after Redrive Count = %d, DeadLetters(q) = %d; want 0, 0", n, len(b.DeadLetters("q")))
	}
	if s := b.Stats(memory.DeadLetterQueue("q")); s.Ready != 0 || s.Redriven != 1 {
		t.Errorf("dead-letter queue stats after Redrive = %+v; want Ready 0 (taken out of the queue too), Redriven 1", s)
	}
	d := receive(t, src)
	m := d.Message()
	if m.Attempt != 1 || string(m.Body) != "poison" || m.Header[broker.HeaderRedriven] != "1" ||
		m.Header[broker.HeaderRedrivenFrom] != "q.dlq-1" || m.Header[broker.HeaderError] != "" || m.Topic != "q" {
		t.Fatalf("redriven message = %q Attempt %d Topic %q headers %v; want poison, Attempt 1, Topic q, redriven 1 from q.dlq-1, no reason", m.Body, m.Attempt, m.Topic, m.Header)
	}
	// It fails again: its second dead letter says it was redriven once, and
	// the limit (1 here) keeps it there.
	settle(t, "DeadLetter", func(ctx context.Context) error { return d.DeadLetter(ctx, broker.Reason{Err: "boom again"}) })
	p := list(t, dl, broker.DeadLetterQuery{})
	if len(p.Items) != 1 || p.Items[0].ID != "q.dlq-2" || p.Items[0].Redriven != 1 || p.Items[0].Reason.Attempts != 1 {
		t.Fatalf("after a second failure List = %+v; want q.dlq-2, redriven 1, 1 attempt", p.Items)
	}
	res, err = dl.Redrive(context.Background(), broker.DeadLetterSelection{All: true}, broker.RedriveOptions{MaxRedrives: 1})
	if !errors.Is(err, broker.ErrRedriveLimit) || len(res.Done) != 0 || len(res.Skipped) != 1 || !errors.Is(res.Skipped[0], broker.ErrRedriveLimit) {
		t.Fatalf("Redrive at the limit = %+v, %v; want q.dlq-2 skipped with ErrRedriveLimit", res, err)
	}
	if n := count(t, dl, broker.DeadLetterFilter{}); n != 1 || !blocked(t, src) {
		t.Fatalf("after a skipped Redrive Count = %d; want 1, and nothing delivered", n)
	}
	// The default limit is 3: redrive it twice more, then it stays.
	for want := 2; want <= 4; want++ {
		res, err = dl.Redrive(context.Background(), broker.DeadLetterSelection{All: true}, broker.RedriveOptions{})
		if want == 4 {
			if !errors.Is(err, broker.ErrRedriveLimit) || len(res.Done) != 0 {
				t.Fatalf("fourth Redrive = %+v, %v; want skipped with ErrRedriveLimit (default %d)", res, err, broker.DefaultMaxRedrives)
			}
			break
		}
		if err != nil || len(res.Done) != 1 {
			t.Fatalf("Redrive %d = %+v, %v; want done", want, res, err)
		}
		d := receive(t, src)
		if got := d.Message().Header[broker.HeaderRedriven]; got != fmt.Sprint(want) || d.Message().Attempt != 1 {
			t.Fatalf("redrive %d delivered %s = %q, Attempt %d; want %d, 1", want, broker.HeaderRedriven, got, d.Message().Attempt, want)
		}
		settle(t, "DeadLetter", func(ctx context.Context) error { return d.DeadLetter(ctx, broker.Reason{Err: "boom"}) })
	}
	// No limit.
	res, err = dl.Redrive(context.Background(), broker.DeadLetterSelection{All: true}, broker.RedriveOptions{MaxRedrives: -1})
	if err != nil || len(res.Done) != 1 {
		t.Fatalf("Redrive without a limit = %+v, %v; want done", res, err)
	}
	settle(t, "Ack", receive(t, src).Ack)
}

func TestDeadLettersRedriveWithoutSource(t *testing.T) {
	b := memory.NewBroker()
	defer b.Close()
	ctx := context.Background()
	// Written by someone else: no reason headers; and one naming a queue
	// that never existed.
	if err := b.Publish(ctx, memory.DeadLetterQueue("q"),
		&broker.Message{Body: []byte("foreign")},
		&broker.Message{Body: []byte("orphan"), Header: broker.Reason{Err: "x", Source: "gone"}.Header(nil)}); err != nil {
		t.Fatal(err)
	}
	dl := b.DeadLettersOf("q")
	p := list(t, dl, broker.DeadLetterQuery{})
	if len(p.Items) != 2 || p.Items[0].HasReason || p.Items[0].ID != "q.dlq-1" || !p.Items[1].HasReason {
		t.Fatalf("List = %+v; want q.dlq-1 without a reason and q.dlq-2 with one", p.Items)
	}
	dry, err := dl.Redrive(ctx, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{DryRun: true})
	if !errors.Is(err, broker.ErrNoSource) || len(dry.Skipped) != 2 || !dry.DryRun {
		t.Errorf("Redrive DryRun = %+v, %v; want both skipped with ErrNoSource", dry, err)
	}
	res, err := dl.Redrive(ctx, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{})
	if !errors.Is(err, broker.ErrNoSource) || len(res.Skipped) != 2 || len(res.Done) != 0 {
		t.Fatalf("Redrive = %+v, %v; want both skipped with ErrNoSource", res, err)
	}
	for _, s := range res.Skipped {
		if !errors.Is(s, broker.ErrNoSource) {
			t.Errorf("skipped %v; want it to wrap ErrNoSource", s)
		}
	}
	if n := count(t, dl, broker.DeadLetterFilter{}); n != 2 {
		t.Fatalf("after the skipped Redrive Count = %d; want 2 (nothing lost)", n)
	}
	if b.Stats("gone") != (memory.QueueStats{}) {
		t.Errorf("Redrive created the missing source queue: %+v", b.Stats("gone"))
	}
	// With a Destination (that exists), they go there.
	src := newSource(t, b, "elsewhere", 1)
	res, err = dl.Redrive(ctx, broker.DeadLetterSelection{All: true, Max: 1}, broker.RedriveOptions{Destination: "elsewhere"})
	if err != nil || !slices.Equal(res.Done, []string{"q.dlq-1"}) {
		t.Fatalf("Redrive Max 1 to elsewhere = %+v, %v; want q.dlq-1 done", res, err)
	}
	if m := receive(t, src).Message(); string(m.Body) != "foreign" || m.Attempt != 1 || m.Header[broker.HeaderRedriven] != "1" {
		t.Errorf("redriven to elsewhere: %q Attempt %d headers %v; want foreign, 1, redriven 1", m.Body, m.Attempt, m.Header)
	}
	// A queue named gone that exists now is still not where q's dead
	// letters go: headers do not choose.
	publish(t, b, "gone", "now here")
	if res, err := dl.Redrive(ctx, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{}); !errors.Is(err, broker.ErrNoSource) || len(res.Done) != 0 {
		t.Errorf("Redrive once a queue named gone exists = %+v, %v; want it skipped with ErrNoSource", res, err)
	}
	// The dead letters' own queue q never existed (nothing was published
	// to it, consumed from it or dead-lettered from it): a dead letter
	// naming it is skipped too.
	if err := b.Publish(ctx, memory.DeadLetterQueue("q"), &broker.Message{Body: []byte("mine"), Header: broker.Reason{Err: "x", Source: "q"}.Header(nil)}); err != nil {
		t.Fatal(err)
	}
	res, err = dl.Redrive(ctx, broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: []string{"q.dlq-3"}}}, broker.RedriveOptions{})
	if !errors.Is(err, broker.ErrNoSource) || len(res.Done) != 0 || b.Stats("q") != (memory.QueueStats{}) {
		t.Errorf("Redrive to q, which does not exist = %+v, %v, stats of q %+v; want it skipped with ErrNoSource, q not created", res, err, b.Stats("q"))
	}
}

func TestDeadLettersUnknownIDsDryRunAndPurge(t *testing.T) {
	b := memory.NewBroker()
	defer b.Close()
	ctx := context.Background()
	for i := range 4 {
		deadLetter(t, b, "q", fmt.Sprint(i), "boom", 1)
	}
	dl := b.DeadLettersOf("q")
	dlqBefore := b.Stats(memory.DeadLetterQueue("q"))
	qBefore := b.Stats("q")

	res, err := dl.Redrive(ctx, broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: []string{"q.dlq-9", "nope"}}}, broker.RedriveOptions{})
	if !errors.Is(err, broker.ErrDeadLetterNotFound) || !slices.Equal(res.Missing, []string{"q.dlq-9", "nope"}) || len(res.Done) != 0 {
		t.Errorf("Redrive of unknown ids = %+v, %v; want both missing, ErrDeadLetterNotFound", res, err)
	}
	res, err = dl.Redrive(ctx, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{DryRun: true})
	if err != nil || len(res.Done) != 4 || !res.DryRun {
		t.Errorf("Redrive DryRun = %+v, %v; want 4 done, DryRun", res, err)
	}
	res, err = dl.Purge(ctx, broker.DeadLetterSelection{All: true}, true)
	if err != nil || len(res.Done) != 4 || !res.DryRun {
		t.Errorf("Purge dry run = %+v, %v; want 4 done, DryRun", res, err)
	}
	if s := b.Stats(memory.DeadLetterQueue("q")); s != dlqBefore || b.Stats("q") != qBefore || count(t, dl, broker.DeadLetterFilter{}) != 4 {
		t.Fatalf("after unknown ids and dry runs: stats %+v, %+v; want unchanged %+v, %+v, Count 4", s, b.Stats("q"), dlqBefore, qBefore)
	}

	res, err = dl.Purge(ctx, broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: []string{"q.dlq-3", "q.dlq-1", "x"}}}, false)
	if !errors.Is(err, broker.ErrDeadLetterNotFound) || !slices.Equal(res.Done, []string{"q.dlq-1", "q.dlq-3"}) || !slices.Equal(res.Missing, []string{"x"}) {
		t.Fatalf("Purge of 2 known and 1 unknown = %+v, %v; want q.dlq-1, q.dlq-3 done, x missing", res, err)
	}
	if got := ids(list(t, dl, broker.DeadLetterQuery{})); !slices.Equal(got, []string{"q.dlq-2", "q.dlq-4"}) {
		t.Errorf("after Purge List = %v; want q.dlq-2, q.dlq-4", got)
	}
	var bodies []string
	for _, m := range b.DeadLetters("q") {
		bodies = append(bodies, string(m.Body))
	}
	if !slices.Equal(bodies, []string{"1", "3"}) {
		t.Errorf("after Purge DeadLetters(q) = %v; want [1 3]", bodies)
	}
	if s := b.Stats(memory.DeadLetterQueue("q")); s.Ready != 2 || s.Purged != 2 {
		t.Errorf("dead-letter queue stats after Purge = %+v; want Ready 2, Purged 2", s)
	}
	// What is left in the dead-letter queue itself is what is left to list.
	dsrc := newSource(t, b, memory.DeadLetterQueue("q"), 2)
	if m := receive(t, dsrc).Message(); string(m.Body) != "1" {
		t.Errorf("consuming the dead-letter queue after Purge gave %q; want 1", m.Body)
	}
	res, err = dl.Purge(ctx, broker.DeadLetterSelection{All: true}, false)
	if err != nil || len(res.Done) != 2 || count(t, dl, broker.DeadLetterFilter{}) != 0 {
		t.Errorf("Purge All = %+v, %v; want 2 done and none left", res, err)
	}
	if !blocked(t, dsrc) {
		t.Errorf("the purged dead letter waiting in the dead-letter queue was still delivered")
	}
}

func TestDeadLettersClosedBroker(t *testing.T) {
	b := memory.NewBroker()
	deadLetter(t, b, "q", "x", "boom", 1)
	dl := b.DeadLettersOf("q")
	b.Close()
	ctx := context.Background()
	if _, err := dl.Redrive(ctx, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{}); !errors.Is(err, memory.ErrBrokerClosed) {
		t.Errorf("Redrive after Close = %v; want ErrBrokerClosed", err)
	}
	if _, err := dl.Purge(ctx, broker.DeadLetterSelection{All: true}, false); !errors.Is(err, memory.ErrBrokerClosed) {
		t.Errorf("Purge after Close = %v; want ErrBrokerClosed", err)
	}
	// Reading stays possible, as DeadLetters and Stats do.
	if n := count(t, dl, broker.DeadLetterFilter{}); n != 1 {
		t.Errorf("Count after Close = %d; want 1", n)
	}
}

// TestDeadLettersConcurrent redrives, purges and lists from several
// goroutines while a consumer dead-letters what it receives; run with -race.
// Every message ends acked, purged or still a dead letter, exactly once.
func TestDeadLettersConcurrent(t *testing.T) {
	b := memory.NewBroker()
	defer b.Close()
	const n = 200
	for i := range n {
		publish(t, b, "q", fmt.Sprint(i))
	}
	src := newSource(t, b, "q", 8)
	dl := b.DeadLettersOf("q")
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	var (
		mu     sync.Mutex
		acked  = map[string]int{}
		purged int
		wg     sync.WaitGroup
	)
	wg.Add(1)
	go func() { // the consumer: dead-letters a message until it was redriven twice
		defer wg.Done()
		for {
			d, err := src.Receive(ctx)
			if err != nil {
				return
			}
			m := d.Message()
			if broker.Redriven(m.Header) >= 2 {
				mu.Lock()
				acked[string(m.Body)]++
				mu.Unlock()
				d.Ack(ctx)
				continue
			}
			d.DeadLetter(ctx, broker.Reason{Err: "boom"})
		}
	}()
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if w == 0 {
					res, _ := dl.Purge(ctx, broker.DeadLetterSelection{All: true, Max: 1}, false)
					mu.Lock()
					purged += len(res.Done)
					mu.Unlock()
					time.Sleep(time.Millisecond)
				} else {
					dl.Redrive(ctx, broker.DeadLetterSelection{All: true, Max: 5}, broker.RedriveOptions{})
					dl.List(ctx, broker.DeadLetterQuery{Limit: 10})
				}
				c, _ := dl.Count(ctx, broker.DeadLetterFilter{})
				mu.Lock()
				done := len(acked)+purged+c == n && c == 0
				mu.Unlock()
				if done {
					cancel()
				}
			}
		}()
	}
	wg.Wait()
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Errorf("not every message was acked or purged within %v", wait)
	}
	left := count(t, dl, broker.DeadLetterFilter{})
	mu.Lock()
	defer mu.Unlock()
	for k, v := range acked {
		if v != 1 {
			t.Errorf("message %s acked %d times", k, v)
		}
	}
	if s := b.Stats("q"); len(acked)+purged+left+s.Ready+s.Unacked != n {
		t.Errorf("acked %d + purged %d + dead letters %d + in the queue %d = %d; want %d (none lost, none twice)", len(acked), purged, left, s.Ready+s.Unacked, len(acked)+purged+left+s.Ready+s.Unacked, n)
	}
}

// TestDeadLettersRedriveGoesToTheirOwnQueue: headers do not choose where a
// redrive writes. A dead letter of q whose reason names another queue that
// exists, or no queue, is skipped with ErrNoSource and nothing arrives in
// that queue; with a Destination it goes there.
func TestDeadLettersRedriveGoesToTheirOwnQueue(t *testing.T) {
	b := memory.NewBroker()
	defer b.Close()
	ctx := context.Background()
	publish(t, b, "q", "warm")       // the source exists
	publish(t, b, "payments", "own") // and so does another queue
	if err := b.Publish(ctx, memory.DeadLetterQueue("q"),
		&broker.Message{Body: []byte("forged"), Header: broker.Reason{Err: "x", Source: "payments"}.Header(nil)},
		&broker.Message{Body: []byte("sourceless"), Header: map[string]string{broker.HeaderError: "x"}},
		&broker.Message{Body: []byte("mine"), Header: broker.Reason{Err: "x", Source: "q"}.Header(nil)}); err != nil {
		t.Fatal(err)
	}
	dl := b.DeadLettersOf("q")
	before := b.Stats("payments")
	res, err := dl.Redrive(ctx, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{})
	if !errors.Is(err, broker.ErrNoSource) || !slices.Equal(res.Done, []string{"q.dlq-3"}) || len(res.Skipped) != 2 ||
		res.Skipped[0].ID != "q.dlq-1" || res.Skipped[1].ID != "q.dlq-2" ||
		!errors.Is(res.Skipped[0], broker.ErrNoSource) || !errors.Is(res.Skipped[1], broker.ErrNoSource) {
		t.Fatalf("Redrive(All) = %+v, %v; want q.dlq-3 done, q.dlq-1 (names payments) and q.dlq-2 (names no queue) skipped with ErrNoSource", res, err)
	}
	if s := b.Stats("payments"); s != before {
		t.Errorf("payments after the Redrive of q's dead letters: %+v; want unchanged %+v (a header named it)", s, before)
	}
	if got := count(t, dl, broker.DeadLetterFilter{}); got != 2 {
		t.Errorf("after Redrive Count = %d; want the 2 skipped left", got)
	}
	src := newSource(t, b, "q", 2)
	for _, want := range []string{"warm", "mine"} {
		if m := receive(t, src).Message(); string(m.Body) != want {
			t.Errorf("q delivered %q; want %q", m.Body, want)
		}
	}
	res, err = dl.Redrive(ctx, broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: []string{"q.dlq-1"}}}, broker.RedriveOptions{Destination: "payments"})
	if err != nil || !slices.Equal(res.Done, []string{"q.dlq-1"}) {
		t.Fatalf("Redrive(q.dlq-1) to Destination payments = %+v, %v; want done", res, err)
	}
	if s := b.Stats("payments"); s.Ready != before.Ready+1 {
		t.Errorf("payments after a Redrive with Destination payments: Ready %d; want %d", s.Ready, before.Ready+1)
	}
}

// TestDeadLettersRedriveRefusesBadDestinations: a Destination that does not
// exist (a typo) or that is the dead-letter queue itself is refused before
// anything is sent, dry run or not, and no queue is created.
func TestDeadLettersRedriveRefusesBadDestinations(t *testing.T) {
	b := memory.NewBroker()
	defer b.Close()
	ctx := context.Background()
	for i := range 3 {
		deadLetter(t, b, "orders", fmt.Sprint(i), "boom", 1)
	}
	dl := b.DeadLettersOf("orders")
	dlq := b.Stats(memory.DeadLetterQueue("orders"))
	for _, c := range []struct {
		dest string
		want error
	}{
		{"ordres", broker.ErrNoSource},
		{memory.DeadLetterQueue("orders"), broker.ErrInvalidConfig},
	} {
		for _, dry := range []bool{false, true} {
			res, err := dl.Redrive(ctx, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{Destination: c.dest, DryRun: dry})
			if !errors.Is(err, c.want) || len(res.Done) != 0 {
				t.Errorf("Redrive to Destination %q (DryRun %v) = %+v, %v; want it refused with an error wrapping %v, nothing done", c.dest, dry, res, err, c.want)
			}
		}
	}
	if s := b.Stats("ordres"); s != (memory.QueueStats{}) {
		t.Errorf("the Redrive created the queue ordres: %+v", s)
	}
	if s := b.Stats(memory.DeadLetterQueue("orders")); s != dlq || count(t, dl, broker.DeadLetterFilter{}) != 3 {
		t.Errorf("dead-letter queue after refused Redrives: %+v, Count %d; want unchanged %+v, 3", s, count(t, dl, broker.DeadLetterFilter{}), dlq)
	}
}
