package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/retry"
)

// dlFixture declares queue q of type typ with its topology (dead-letter
// exchange and queue, retry queue), and returns q, the topology and a
// DeadLetters for it, closed at the end of the test.
func dlFixture(t *testing.T, typ string) (string, Topology, *DeadLetters) {
	t.Helper()
	needBroker(t)
	q := uniqueQueue(t)
	topo := Topology{QueueType: typ}
	if err := topo.resolve(q); err != nil {
		t.Fatal(err)
	}
	ch, err := rawConn(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := topo.declare(ch, q); err != nil {
		t.Fatalf("declare: %v", err)
	}
	_ = ch.Close()
	dl, err := NewDeadLetters(DeadLetterConfig{Dialer: Dialer{URL: amqpURL()}, Queue: q, QueueType: typ, Logger: quietLogger()})
	if err != nil {
		t.Fatalf("NewDeadLetters = %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := dl.Close(ctx); err != nil {
			t.Errorf("DeadLetters.Close = %v", err)
		}
	})
	return q, topo, dl
}

// dlID is the dead-letter id of dead letter i written by fillDeadLetters.
func dlID(i int) string { return fmt.Sprintf("%032x", i+1) }

// deadLetterOf returns dead letter i of queue q as a Source writes it: the
// reason headers, the routing key, a dead-letter id; every third one failed
// with "timeout", the others with "bad input".
func deadLetterOf(q string, i int) amqp.Publishing {
	why := "bad input"
	if i%3 == 0 {
		why = "timeout"
	}
	h := amqp.Table{
		HeaderDeadLetterID:     dlID(i),
		broker.HeaderError:     fmt.Sprintf("%s #%d", why, i),
		broker.HeaderAttempts:  "3",
		broker.HeaderSource:    q,
		broker.HeaderPermanent: "false",
		broker.HeaderFailedAt:  time.Date(2026, 1, 1, 0, 0, i, 0, time.UTC).Format(time.RFC3339Nano),
		routingKeyHeader:       fmt.Sprintf("key-%d", i),
		HeaderDeliveries:       int64(3),
		"x-order":              int64(i),
	}
	return amqp.Publishing{MessageId: fmt.Sprintf("msg-%05d", i), DeliveryMode: amqp.Persistent, Headers: h, Body: []byte(fmt.Sprintf("body %d", i))}
}

// publishTo publishes msgs to queue q (through the default exchange) with
// confirms, in order.
func publishTo(t testing.TB, q string, msgs []amqp.Publishing) {
	t.Helper()
	c, err := amqp.Dial(amqpURL())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	ch, err := c.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	const window = 512
	var pending []*amqp.DeferredConfirmation
	flush := func() {
		for _, dc := range pending {
			if ok, err := dc.WaitContext(context.Background()); err != nil || !ok {
				t.Fatalf("publish to %s: confirm ok=%v err=%v", q, ok, err)
			}
		}
		pending = pending[:0]
	}
	for _, m := range msgs {
		dc, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), "", q, true, false, m)
		if err != nil {
			t.Fatalf("publish to %s: %v", q, err)
		}
		pending = append(pending, dc)
		if len(pending) == window {
			flush()
		}
	}
	flush()
}

// fillDeadLetters writes n dead letters (deadLetterOf) to q's dead-letter
// queue.
func fillDeadLetters(t testing.TB, q string, n int) {
	t.Helper()
	msgs := make([]amqp.Publishing, n)
	for i := range msgs {
		msgs[i] = deadLetterOf(q, i)
	}
	publishTo(t, q+".dlq", msgs)
}

// takeAll removes every message of q (basic.get with auto-ack) and returns
// them in queue order.
func takeAll(t testing.TB, q string) []amqp.Delivery {
	t.Helper()
	c, err := amqp.Dial(amqpURL())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	ch, err := c.Channel()
	if err != nil {
		t.Fatal(err)
	}
	var out []amqp.Delivery
	for {
		d, ok, err := ch.Get(q, true)
		if err != nil {
			t.Fatalf("get from %s: %v", q, err)
		}
		if !ok {
			return out
		}
		out = append(out, d)
	}
}

// peekIDs returns the dead-letter ids of q's messages in order without
// removing them.
func peekIDs(t testing.TB, q string) []string {
	t.Helper()
	c, err := amqp.Dial(amqpURL())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	ch, err := c.Channel()
	if err != nil {
		t.Fatal(err)
	}
	var (
		out    []string
		last   uint64
		quorum bool
	)
	for {
		d, ok, err := ch.Get(q, false)
		if err != nil {
			t.Fatalf("get from %s: %v", q, err)
		}
		if !ok {
			break
		}
		out = append(out, deadLetterID(&d))
		last = d.DeliveryTag
		if _, ok := d.Headers["x-delivery-count"]; ok || strings.Contains(q, "quorum") {
			quorum = true
		}
	}
	// In order: a quorum queue returns what a closed channel held in no
	// particular order, and a multiple nack partly reversed (see
	// scan.close); a classic queue requeues at once on a close.
	if quorum {
		for tag := uint64(1); tag <= last; tag++ {
			if err := ch.Nack(tag, false, true); err != nil {
				t.Fatal(err)
			}
		}
	} else {
		_ = ch.Close() // requeues at once; a multiple nack takes minutes (see scan.close)
	}
	// Closing the channel before the queue took them all back reorders a
	// quorum queue (RabbitMQ 3.10: by a rotation), as in scan.settle.
	waitFor(t, time.Minute, "the messages back in "+q, func() bool {
		n, err := readyCount(q)
		return err == nil && n >= len(out)
	})
	return out
}

func ids(items []broker.DeadLetter) []string {
	out := make([]string, len(items))
	for i, d := range items {
		out[i] = d.ID
	}
	return out
}

func wantIDs(idx ...int) []string {
	out := make([]string, len(idx))
	for i, n := range idx {
		out[i] = dlID(n)
	}
	return out
}

func seq(from, to int) []int {
	var out []int
	for i := from; i < to; i++ {
		out = append(out, i)
	}
	return out
}

// TestDeadLettersOfASource dead-letters messages through a real Source and
// consumer, then lists them with their reasons through Source.DeadLetters,
// redrives one (it comes back to the queue with a fresh attempt count, its
// routing key and the redrive count) and purges another.
func TestDeadLettersOfASource(t *testing.T) {
	for _, typ := range []string{Classic, Quorum} {
		t.Run(typ, func(t *testing.T) {
			needBroker(t)
			q := uniqueQueue(t)
			cfg := testConfig(q)
			cfg.Topology.QueueType = typ
			cfg.Logger = quietLogger()
			src, err := NewSource(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := src.DeclareTopology(ctx); err != nil {
				t.Fatalf("DeclareTopology = %v", err)
			}
			pub, err := NewPublisher(PublisherConfig{Dialer: Dialer{URL: amqpURL()}})
			if err != nil {
				t.Fatal(err)
			}
			defer pub.Close(context.Background())
			for i := range 3 {
				m := &broker.Message{ID: fmt.Sprintf("order-%d", i), Key: []byte(q), Body: []byte(fmt.Sprintf("order %d", i)),
					Header: map[string]string{"tenant": "acme"}}
				if err := pub.Publish(ctx, "", m); err != nil {
					t.Fatal(err)
				}
			}
			for i := range 3 {
				d, err := src.Receive(ctx)
				if err != nil {
					t.Fatal(err)
				}
				r := broker.Reason{Err: fmt.Sprintf("card declined %d", i), Attempts: 2, Source: q, Permanent: true, Time: time.Now()}
				if err := d.DeadLetter(ctx, r); err != nil {
					t.Fatal(err)
				}
			}
			dls := src.DeadLetters()
			if dls != src.DeadLetters() {
				t.Fatal("Source.DeadLetters returned two different DeadLetters")
			}
			page, err := dls.List(ctx, broker.DeadLetterQuery{})
			if err != nil {
				t.Fatalf("List = %v", err)
			}
			if len(page.Items) != 3 || page.Next != "" {
				t.Fatalf("List = %d items, next %q; want 3, no next", len(page.Items), page.Next)
			}
			hex32 := regexp.MustCompile(`^[0-9a-f]{32}$`)
			for i, it := range page.Items {
				if !hex32.MatchString(it.ID) || !it.HasReason || it.Reason.Err != fmt.Sprintf("card declined %d", i) ||
					it.Reason.Source != q || it.Reason.Attempts != 2 || !it.Reason.Permanent || it.Reason.Time.IsZero() ||
					string(it.Message.Body) != fmt.Sprintf("order %d", i) || it.Message.ID != fmt.Sprintf("order-%d", i) ||
					it.Message.Header["tenant"] != "acme" || string(it.Message.Key) != q || it.Partition != -1 || it.Offset != -1 {
					t.Errorf("item %d = %+v", i, it)
				}
				if _, ok := it.Message.Header["x-delivery-count"]; ok {
					t.Errorf("item %d shows x-delivery-count", i)
				}
			}
			res, err := dls.Redrive(ctx, broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: []string{page.Items[1].ID}}}, broker.RedriveOptions{})
			if err != nil || !slices.Equal(res.Done, []string{page.Items[1].ID}) {
				t.Fatalf("Redrive(item 1) = %+v, %v", res, err)
			}
			d, err := src.Receive(ctx)
			if err != nil {
				t.Fatal(err)
			}
			m := d.Message()
			if m.ID != "order-1" || m.Attempt != 1 || m.Header[broker.HeaderRedriven] != "1" || m.Header[broker.HeaderRedrivenFrom] != page.Items[1].ID ||
				m.Header[broker.HeaderError] != "" || m.Header[HeaderDeadLetterID] != "" || m.Header["tenant"] != "acme" || string(m.Key) != q {
				t.Errorf("redriven message = %+v", m)
			}
			if err := d.Ack(ctx); err != nil {
				t.Fatal(err)
			}
			res, err = dls.Purge(ctx, broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{Reason: "DECLINED 2"}}, false)
			if err != nil || !slices.Equal(res.Done, []string{page.Items[2].ID}) {
				t.Fatalf("Purge(reason) = %+v, %v", res, err)
			}
			if n, err := dls.Count(ctx, broker.DeadLetterFilter{}); err != nil || n != 1 {
				t.Fatalf("Count = %d, %v; want 1", n, err)
			}
			if err := src.Close(ctx); err != nil {
				t.Fatalf("Close = %v", err)
			}
			if _, err := dls.Count(ctx, broker.DeadLetterFilter{}); !errors.Is(err, ErrDeadLettersClosed) {
				t.Fatalf("Count after the source's Close = %v; want ErrDeadLettersClosed", err)
			}
		})
	}
}

// TestDeadLettersListPagesInOrder pages through 50 dead letters, with and
// without filters, and checks that the queue holds the same messages in the
// same order afterwards.
func TestDeadLettersListPagesInOrder(t *testing.T) {
	for _, typ := range []string{Classic, Quorum} {
		t.Run(typ, func(t *testing.T) {
			q, _, dl := dlFixture(t, typ)
			const n = 50
			fillDeadLetters(t, q, n)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			before := peekIDs(t, q+".dlq")
			// A classic queue keeps the order exactly; a quorum queue
			// (RabbitMQ 3.10) keeps the messages but may reorder them when
			// they are given back (see the package doc): there the test
			// checks the sets.
			same := slices.Equal[[]string]
			if typ == Quorum {
				same = func(a, b []string) bool {
					a, b = slices.Clone(a), slices.Clone(b)
					slices.Sort(a)
					slices.Sort(b)
					return slices.Equal(a, b)
				}
			}
			var got []string
			cursor := ""
			for pages := 0; typ == Classic; pages++ {
				page, err := dl.List(ctx, broker.DeadLetterQuery{Limit: 7, Cursor: cursor, BodyLimit: 4})
				if err != nil {
					t.Fatalf("List(cursor %q) = %v", cursor, err)
				}
				for _, it := range page.Items {
					if string(it.Message.Body) != "body" || it.BodySize != len(fmt.Sprintf("body %d", len(got))) {
						t.Fatalf("item %s body %q size %d", it.ID, it.Message.Body, it.BodySize)
					}
					got = append(got, it.ID)
				}
				if page.Next == "" {
					break
				}
				if pages > n {
					t.Fatal("List never ends")
				}
				cursor = page.Next
			}
			if typ == Quorum {
				page, err := dl.List(ctx, broker.DeadLetterQuery{Limit: 100})
				if err != nil {
					t.Fatal(err)
				}
				got = ids(page.Items)
			}
			if !same(got, wantIDs(seq(0, n)...)) {
				t.Fatalf("paged ids = %v", got)
			}
			page, err := dl.List(ctx, broker.DeadLetterQuery{DeadLetterFilter: broker.DeadLetterFilter{Reason: "TIMEOUT"}, Limit: 5})
			if err != nil || len(page.Items) != 5 || page.Next == "" || typ == Classic && !same(ids(page.Items), wantIDs(0, 3, 6, 9, 12)) {
				t.Fatalf("List(reason timeout, limit 5) = %v next %q, %v", ids(page.Items), page.Next, err)
			}
			page, err = dl.List(ctx, broker.DeadLetterQuery{DeadLetterFilter: broker.DeadLetterFilter{Reason: "timeout"}, Limit: 100, Cursor: page.Next})
			if err != nil || typ == Classic && !same(ids(page.Items), wantIDs(15, 18, 21, 24, 27, 30, 33, 36, 39, 42, 45, 48)) || page.Next != "" {
				t.Fatalf("List(reason timeout, second page) = %v next %q, %v", ids(page.Items), page.Next, err)
			}
			after := time.Date(2026, 1, 1, 0, 0, 45, 0, time.UTC)
			page, err = dl.List(ctx, broker.DeadLetterQuery{DeadLetterFilter: broker.DeadLetterFilter{After: after, Source: q}})
			if err != nil || !same(ids(page.Items), wantIDs(46, 47, 48, 49)) {
				t.Fatalf("List(after :45, source) = %v, %v", ids(page.Items), err)
			}
			page, err = dl.List(ctx, broker.DeadLetterQuery{DeadLetterFilter: broker.DeadLetterFilter{Source: "elsewhere"}})
			if err != nil || len(page.Items) != 0 || page.Next != "" {
				t.Fatalf("List(source elsewhere) = %v, %v", ids(page.Items), err)
			}
			if c, err := dl.Count(ctx, broker.DeadLetterFilter{Reason: "bad input"}); err != nil || c != 33 {
				t.Fatalf("Count(bad input) = %d, %v; want 33", c, err)
			}
			if after := peekIDs(t, q+".dlq"); !same(before, after) || len(after) != n {
				t.Fatalf("queue after List: %d messages, same order %v; want %d in the same order", len(after), same(before, after), n)
			}
		})
	}
}

// TestDeadLettersCursorAfterRemovals: a page's cursor still works when dead
// letters before it were redriven or purged meanwhile, and fails with
// ErrDeadLetterNotFound when its own dead letter is gone.
func TestDeadLettersCursorAfterRemovals(t *testing.T) {
	q, _, dl := dlFixture(t, Classic)
	fillDeadLetters(t, q, 10)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	page, err := dl.List(ctx, broker.DeadLetterQuery{Limit: 4})
	if err != nil || page.Next == "" {
		t.Fatalf("List = %v, %v", page, err)
	}
	if _, err := dl.Purge(ctx, broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: wantIDs(0, 2)}}, false); err != nil {
		t.Fatal(err)
	}
	next, err := dl.List(ctx, broker.DeadLetterQuery{Limit: 4, Cursor: page.Next})
	if err != nil || !slices.Equal(ids(next.Items), wantIDs(4, 5, 6, 7)) {
		t.Fatalf("List(next, after purging 0 and 2) = %v, %v; want 4..7", ids(next.Items), err)
	}
	if _, err := dl.Purge(ctx, broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: wantIDs(7)}}, false); err != nil {
		t.Fatal(err)
	}
	_, err = dl.List(ctx, broker.DeadLetterQuery{Limit: 4, Cursor: next.Next})
	if !errors.Is(err, broker.ErrDeadLetterNotFound) {
		t.Fatalf("List(cursor of a purged dead letter) = %v; want ErrDeadLetterNotFound", err)
	}
	for _, c := range []string{"x", "3", ":abc", "-1:abc", "1:"} {
		if _, err := dl.List(ctx, broker.DeadLetterQuery{Cursor: c}); !errors.Is(err, broker.ErrInvalidConfig) {
			t.Errorf("List(cursor %q) = %v; want ErrInvalidConfig", c, err)
		}
	}
}

// TestDeadLettersRedrive: all, by filter, by id, Max, DryRun and the limit;
// copies lose the reason headers and attempt counters and keep the rest.
func TestDeadLettersRedrive(t *testing.T) {
	q, _, dl := dlFixture(t, Classic)
	fillDeadLetters(t, q, 10)
	// Dead letter 10 was redriven 3 times already.
	m := deadLetterOf(q, 10)
	m.Headers[broker.HeaderRedriven] = "3"
	publishTo(t, q+".dlq", []amqp.Publishing{m})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	res, err := dl.Redrive(ctx, broker.DeadLetterSelection{All: true, Max: 2}, broker.RedriveOptions{DryRun: true})
	if err != nil || !res.DryRun || !slices.Equal(res.Done, wantIDs(0, 1)) {
		t.Fatalf("Redrive(dry run, max 2) = %+v, %v", res, err)
	}
	if got := takeAll(t, q); len(got) != 0 {
		t.Fatalf("dry run sent %d messages", len(got))
	}
	res, err = dl.Redrive(ctx, broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{Reason: "timeout"}, Max: 2}, broker.RedriveOptions{})
	if err != nil || !slices.Equal(res.Done, wantIDs(0, 3)) {
		t.Fatalf("Redrive(timeout, max 2) = %+v, %v", res, err)
	}
	got := takeAll(t, q)
	if len(got) != 2 {
		t.Fatalf("source queue has %d messages; want 2", len(got))
	}
	for i, d := range got {
		want := []int{0, 3}[i]
		h := d.Headers
		if d.MessageId != fmt.Sprintf("msg-%05d", want) || h[broker.HeaderRedriven] != "1" || h[broker.HeaderRedrivenFrom] != dlID(want) ||
			h[routingKeyHeader] != fmt.Sprintf("key-%d", want) || h["x-order"] != int64(want) || d.DeliveryMode != amqp.Persistent {
			t.Errorf("copy %d = %+v", i, d)
		}
		for _, k := range []string{broker.HeaderError, broker.HeaderAttempts, broker.HeaderSource, broker.HeaderFailedAt, HeaderDeliveries, HeaderDeadLetterID, "x-death"} {
			if _, ok := h[k]; ok {
				t.Errorf("copy %d keeps %s", i, k)
			}
		}
		if msg := toMessage(&got[i], q, nil); msg.Attempt != 1 || string(msg.Key) != fmt.Sprintf("key-%d", want) {
			t.Errorf("copy %d reads as attempt %d key %q; want 1, key-%d", i, msg.Attempt, msg.Key, want)
		}
	}
	res, err = dl.Redrive(ctx, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{})
	if !errors.Is(err, broker.ErrRedriveLimit) || !slices.Equal(res.Done, wantIDs(1, 2, 4, 5, 6, 7, 8, 9)) ||
		len(res.Skipped) != 1 || res.Skipped[0].ID != dlID(10) || !errors.Is(res.Skipped[0], broker.ErrRedriveLimit) {
		t.Fatalf("Redrive(all) = %+v, %v; want 8 done and 10 skipped for the limit", res, err)
	}
	if got := peekIDs(t, q+".dlq"); !slices.Equal(got, wantIDs(10)) {
		t.Fatalf("dead letters left = %v; want only 10", got)
	}
	res, err = dl.Redrive(ctx, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{MaxRedrives: -1})
	if err != nil || !slices.Equal(res.Done, wantIDs(10)) {
		t.Fatalf("Redrive(no limit) = %+v, %v", res, err)
	}
	if got := takeAll(t, q); len(got) != 9 || got[8].Headers[broker.HeaderRedriven] != "4" {
		t.Fatalf("source queue = %d messages; want 9, the last redriven 4 times", len(got))
	}
}

// TestDeadLettersBadInput: what an operator can get wrong, and dead letters
// written by someone else. Nothing is lost in any case.
func TestDeadLettersBadInput(t *testing.T) {
	q, _, dl := dlFixture(t, Classic)
	fillDeadLetters(t, q, 3)
	gone := deadLetterOf("no-such-queue-"+q, 3)
	foreign := amqp.Publishing{Body: []byte("written by a shell script"), Headers: amqp.Table{"who": "ops"}}
	publishTo(t, q+".dlq", []amqp.Publishing{gone, foreign})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	all := peekIDs(t, q+".dlq")
	if len(all) != 5 || !strings.HasPrefix(all[4], "h-") {
		t.Fatalf("dead letters = %v; want 5, the last named by a hash", all)
	}
	foreignID := all[4]

	page, err := dl.List(ctx, broker.DeadLetterQuery{DeadLetterFilter: broker.DeadLetterFilter{IDs: []string{foreignID}}})
	if err != nil || len(page.Items) != 1 || page.Items[0].HasReason || page.Items[0].Reason != (broker.Reason{}) || string(page.Items[0].Message.Body) != "written by a shell script" {
		t.Fatalf("List(foreign) = %+v, %v", page, err)
	}
	res, err := dl.Redrive(ctx, broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: []string{"nope", dlID(1)}}}, broker.RedriveOptions{})
	if !errors.Is(err, broker.ErrDeadLetterNotFound) || !slices.Equal(res.Missing, []string{"nope"}) || !slices.Equal(res.Done, wantIDs(1)) {
		t.Fatalf("Redrive(unknown and 1) = %+v, %v", res, err)
	}
	res, err = dl.Redrive(ctx, broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: []string{dlID(3), foreignID}}}, broker.RedriveOptions{})
	slices.SortFunc(res.Skipped, func(a, b broker.Skipped) int { return strings.Compare(a.ID, b.ID) }) // dlID(3) < "h-…"
	if !errors.Is(err, broker.ErrNoSource) || len(res.Done) != 0 || len(res.Skipped) != 2 ||
		res.Skipped[0].ID != dlID(3) || res.Skipped[1].ID != foreignID ||
		!errors.Is(res.Skipped[0], broker.ErrNoSource) || !errors.Is(res.Skipped[1], broker.ErrNoSource) {
		t.Fatalf("Redrive(source gone, foreign) = %+v, %v", res, err)
	}
	res, err = dl.Redrive(ctx, broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: []string{dlID(3)}}}, broker.RedriveOptions{DryRun: true})
	if !errors.Is(err, broker.ErrNoSource) || len(res.Done) != 0 {
		t.Fatalf("Redrive(source gone, dry run) = %+v, %v", res, err)
	}
	if got := peekIDs(t, q+".dlq"); !slices.Equal(got, []string{dlID(0), dlID(2), dlID(3), foreignID}) {
		t.Fatalf("dead letters = %v; want 0, 2, 3 and the foreign one, in order", got)
	}
	if res, err := dl.Purge(ctx, broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: []string{"nope"}}}, false); !errors.Is(err, broker.ErrDeadLetterNotFound) || len(res.Done) != 0 {
		t.Fatalf("Purge(unknown) = %+v, %v", res, err)
	}
	for name, sel := range map[string]broker.DeadLetterSelection{"empty": {}, "max only": {Max: 3}} {
		if _, err := dl.Redrive(ctx, sel, broker.RedriveOptions{}); !errors.Is(err, broker.ErrEmptySelection) {
			t.Errorf("Redrive(%s) = %v; want ErrEmptySelection", name, err)
		}
		if _, err := dl.Purge(ctx, sel, false); !errors.Is(err, broker.ErrEmptySelection) {
			t.Errorf("Purge(%s) = %v; want ErrEmptySelection", name, err)
		}
	}
	if _, err := dl.List(ctx, broker.DeadLetterQuery{Limit: broker.MaxListLimit + 1}); !errors.Is(err, broker.ErrInvalidConfig) {
		t.Errorf("List(limit over max) = %v; want ErrInvalidConfig", err)
	}
	if _, err := dl.Redrive(ctx, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{Destination: strings.Repeat("q", 256)}); !errors.Is(err, broker.ErrInvalidConfig) {
		t.Errorf("Redrive(destination of 256 bytes) = %v; want ErrInvalidConfig", err)
	}
	cancelled, cancelNow := context.WithCancel(ctx)
	cancelNow()
	if _, err := dl.Purge(cancelled, broker.DeadLetterSelection{All: true}, false); !errors.Is(err, context.Canceled) {
		t.Errorf("Purge(cancelled ctx) = %v; want context.Canceled", err)
	}
	if n, err := dl.Count(ctx, broker.DeadLetterFilter{}); err != nil || n != 4 {
		t.Fatalf("Count = %d, %v; want 4", n, err)
	}
	if _, err := dl.Purge(ctx, broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: []string{foreignID}}}, false); err != nil {
		t.Fatalf("Purge(foreign) = %v", err)
	}

	missing, err := NewDeadLetters(DeadLetterConfig{Dialer: Dialer{URL: amqpURL()}, Queue: q + "-never-declared", Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer missing.Close(context.Background())
	if _, err := missing.List(ctx, broker.DeadLetterQuery{}); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("List of a dead-letter queue that does not exist = %v", err)
	}

	if err := dl.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := dl.List(ctx, broker.DeadLetterQuery{}); !errors.Is(err, ErrDeadLettersClosed) {
		t.Errorf("List after Close = %v; want ErrDeadLettersClosed", err)
	}
	if got := peekIDs(t, q+".dlq"); !slices.Equal(got, []string{dlID(0), dlID(2), dlID(3)}) {
		t.Fatalf("dead letters = %v; want 0, 2, 3", got)
	}
}

func TestNewDeadLettersValidates(t *testing.T) {
	for name, cfg := range map[string]DeadLetterConfig{
		"no queue":         {},
		"dlq is the queue": {Queue: "q", DeadLetterQueue: "q"},
		"bad URL":          {Queue: "q", Dialer: Dialer{URL: "http://guest:s3cret@host/"}},
		"long queue name":  {Queue: strings.Repeat("q", 256)},
	} {
		_, err := NewDeadLetters(cfg)
		if !errors.Is(err, broker.ErrInvalidConfig) || strings.Contains(fmt.Sprint(err), "s3cret") {
			t.Errorf("NewDeadLetters(%s) = %v; want ErrInvalidConfig, no password", name, err)
		}
	}
}

// TestDeadLettersNative: a message RabbitMQ dead-lettered itself (rejected
// without requeue, with x-death) is listed with the queue it died in as its
// source and redriven there.
func TestDeadLettersNative(t *testing.T) {
	q, topo, dl := dlFixture(t, Classic)
	native := q + ".native"
	ch, err := rawConn(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	if _, err := ch.QueueDeclare(native, true, false, false, false, amqp.Table{
		"x-dead-letter-exchange": topo.DeadLetterExchange, "x-dead-letter-routing-key": q,
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteQueues(native) })
	publishTo(t, native, []amqp.Publishing{{MessageId: "native-1", Body: []byte("x")}})
	d, ok, err := ch.Get(native, false)
	if err != nil || !ok {
		t.Fatalf("get = %v, %v", ok, err)
	}
	if err := d.Nack(false, false); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	waitFor(t, 10*time.Second, "the broker's dead letter", func() bool {
		n, err := dl.Count(ctx, broker.DeadLetterFilter{})
		return err == nil && n == 1
	})
	page, err := dl.List(ctx, broker.DeadLetterQuery{})
	if err != nil || len(page.Items) != 1 {
		t.Fatalf("List = %+v, %v", page, err)
	}
	it := page.Items[0]
	if it.ID != "m-native-1" || !it.HasReason || it.Reason.Source != native || !strings.Contains(it.Reason.Err, "rejected") || it.Reason.Time.IsZero() {
		t.Fatalf("native dead letter = %+v", it)
	}
	// Its source is not the dead letters' queue: a redrive needs the
	// destination named.
	res, err := dl.Redrive(ctx, broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{Source: native}}, broker.RedriveOptions{})
	if !errors.Is(err, broker.ErrNoSource) || len(res.Done) != 0 {
		t.Fatalf("Redrive(native, no destination) = %+v, %v; want ErrNoSource", res, err)
	}
	res, err = dl.Redrive(ctx, broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{Source: native}}, broker.RedriveOptions{Destination: native})
	if err != nil || !slices.Equal(res.Done, []string{"m-native-1"}) {
		t.Fatalf("Redrive(native) = %+v, %v", res, err)
	}
	got := takeAll(t, native)
	if len(got) != 1 || got[0].MessageId != "native-1" || got[0].Headers["x-death"] != nil {
		t.Fatalf("native queue = %+v; want the message back without x-death", got)
	}
}

// TestDeadLettersRedriveIntoItself is hostile: the destination is the
// dead-letter queue itself, the retry queue, or a queue that does not
// exist. Each is refused before anything is sent.
func TestDeadLettersRedriveIntoItself(t *testing.T) {
	q, _, dl := dlFixture(t, Classic)
	fillDeadLetters(t, q, 20)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for dest, want := range map[string]error{q + ".dlq": broker.ErrInvalidConfig, q + ".retry": broker.ErrInvalidConfig, q + ".nowhere": broker.ErrNoSource} {
		res, err := dl.Redrive(ctx, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{Destination: dest})
		if !errors.Is(err, want) || len(res.Done) != 0 {
			t.Errorf("Redrive(destination %s) = %d done, %v; want %v", dest, len(res.Done), err, want)
		}
	}
	if got := peekIDs(t, q+".dlq"); !slices.Equal(got, wantIDs(seq(0, 20)...)) {
		t.Fatalf("dead letters = %v; want the 20, in order", got)
	}
}

// TestDeadLettersConcurrentCalls: operations of one DeadLetters run one at
// a time, so concurrent Lists each see every dead letter (a second browse
// running at once would see none of those the first holds).
func TestDeadLettersConcurrentCalls(t *testing.T) {
	q, _, dl := dlFixture(t, Classic)
	fillDeadLetters(t, q, 200)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			page, err := dl.List(ctx, broker.DeadLetterQuery{Limit: 500})
			if err == nil && len(page.Items) != 200 {
				err = fmt.Errorf("List = %d items; want 200", len(page.Items))
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

// TestDeadLettersCancelMidRedrive: a Redrive whose ctx ends half-way
// returns ctx's error and what it did; every dead letter is in the source
// queue or still a dead letter (or, at worst, both).
func TestDeadLettersCancelMidRedrive(t *testing.T) {
	q, _, dl := dlFixture(t, Classic)
	const n = 2000
	fillDeadLetters(t, q, n)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for {
			if r, _ := readyCount(q); r > 100 {
				cancel()
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	res, err := dl.Redrive(ctx, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{})
	cancel()
	if err == nil {
		t.Skipf("Redrive finished before its ctx ended (%d done)", len(res.Done))
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Redrive = %v; want context.Canceled", err)
	}
	seen := map[string]int{}
	for _, d := range takeAll(t, q) {
		seen[d.MessageId]++
	}
	for _, d := range takeAll(t, q+".dlq") {
		seen[d.MessageId]++
	}
	for i := range n {
		if seen[fmt.Sprintf("msg-%05d", i)] == 0 {
			t.Fatalf("msg-%05d was lost (%d done before the cancel)", i, len(res.Done))
		}
	}
	t.Logf("%d done before the cancel", len(res.Done))
}

// readyCount returns the ready count of q by a passive declaration.
func readyCount(q string) (int, error) {
	c, err := amqp.Dial(amqpURL())
	if err != nil {
		return 0, err
	}
	defer c.Close()
	ch, err := c.Channel()
	if err != nil {
		return 0, err
	}
	qq, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
	return qq.Messages, err
}

// TestDeadLettersRedriveUnderAConsumer: dead letters a Source wrote,
// redriven to a consumer that succeeds this time.
func TestDeadLettersRedriveUnderAConsumer(t *testing.T) {
	needBroker(t)
	q := uniqueQueue(t)
	cfg := testConfig(q)
	cfg.Logger = quietLogger()
	src, err := NewSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu       sync.Mutex
		fixed    bool
		handled  []string
		attempts []int
	)
	c, err := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		mu.Lock()
		defer mu.Unlock()
		if !fixed {
			return retry.Permanent(errors.New("bug #42"))
		}
		handled = append(handled, m.ID)
		attempts = append(attempts, m.Attempt)
		return nil
	}), consumer.WithLogger(quietLogger()))
	_, stop, done := runInBackground(t, c, err)
	defer func() { stop(); <-done }()
	pub, err := NewPublisher(PublisherConfig{Dialer: Dialer{URL: amqpURL()}})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	waitFor(t, 10*time.Second, "the consumer", func() bool { return src.Status().Connected })
	for i := range 5 {
		if err := pub.Publish(ctx, "", &broker.Message{ID: strconv.Itoa(i), Key: []byte(q)}); err != nil {
			t.Fatal(err)
		}
	}
	dls, err := c.DeadLetters()
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "5 dead letters", func() bool {
		n, err := dls.Count(ctx, broker.DeadLetterFilter{Reason: "bug #42"})
		return err == nil && n == 5
	})
	mu.Lock()
	fixed = true
	mu.Unlock()
	res, err := dls.Redrive(ctx, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{})
	if err != nil || len(res.Done) != 5 {
		t.Fatalf("Redrive = %+v, %v", res, err)
	}
	waitFor(t, 10*time.Second, "5 handled", func() bool { mu.Lock(); defer mu.Unlock(); return len(handled) == 5 })
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(handled)
	if !slices.Equal(handled, []string{"0", "1", "2", "3", "4"}) || slices.ContainsFunc(attempts, func(a int) bool { return a != 1 }) {
		t.Fatalf("handled %v with attempts %v; want 0..4, each attempt 1", handled, attempts)
	}
}
