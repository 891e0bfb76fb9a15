package brokertest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// The publisher cases check broker.Publisher, on a publisher from
// Fixture.NewPublisher publishing to Fixture.PublishDestination.

// publishKey is the one key of the batch published by testPublishBatch: a
// Kafka topic keeps the order of the records of one key (one partition),
// not across keys.
const publishKey = "brokertest-key"

// testPublishBatch: Publish sends a batch in order, and each message arrives
// as it was published: body, key, headers, the ID when the adapter keeps it
// (Capabilities.PublishedID), and the content-type header of a message made
// by broker.NewJSON. Publish does not modify the messages it is given.
func testPublishBatch(e *env) {
	p := e.publisher()
	const n = 5
	batch := make([]*broker.Message, 0, n+1)
	for i := range n {
		m := msg("publish", i)
		m.Key = []byte(publishKey)
		m.ID = fmt.Sprintf("brokertest-id-%d", i)
		batch = append(batch, &m)
	}
	j, err := broker.NewJSON(map[string]int{"index": n})
	if err != nil {
		e.Fatalf("broker.NewJSON = %v", err)
	}
	j.Key = []byte(publishKey)
	j.Header["x-test-index"] = strconv.Itoa(n)
	batch = append(batch, j)
	ctx, cancel := context.WithTimeout(context.Background(), e.h.Timeout)
	err = p.Publish(ctx, e.f.PublishDestination, batch...)
	cancel()
	if err != nil {
		e.Fatalf("Publish(%q, %d messages) = %v; want nil", e.f.PublishDestination, len(batch), err)
	}
	if j.ID != "" || len(j.Header) != 2 || j.Topic != "" {
		e.Errorf("after Publish the message passed in has ID %q, Topic %q, Header %v; want it unchanged (Publish does not modify its messages)", j.ID, j.Topic, j.Header)
	}
	src := e.source(1)
	for i := range n + 1 {
		d := e.receive(src, fmt.Sprintf("a batch of %d messages was published", n+1))
		m := d.Message()
		if got := m.Header["x-test-index"]; got != strconv.Itoa(i) {
			e.Fatalf("message %d of the batch received is %s with x-test-index %q; want index %d (a batch arrives in order, with its headers)", i, describe(m), got, i)
		}
		if string(m.Key) != publishKey {
			e.Errorf("received %s with Key %q; want %q (Message.Key is the routing or partition key)", describe(m), m.Key, publishKey)
		}
		if i < n {
			if want := msg("publish", i).Body; string(m.Body) != string(want) {
				e.Errorf("received body %q; want %q", m.Body, want)
			}
			if want := batch[i].ID; e.h.Capabilities.PublishedID && m.ID != want {
				e.Errorf("received %s; want the ID %q it was published with (Capabilities.PublishedID)", describe(m), want)
			}
		} else {
			var v map[string]int
			if err := json.Unmarshal(m.Body, &v); err != nil || v["index"] != n {
				e.Errorf("the message made by NewJSON arrived with body %q; want the JSON %q", m.Body, j.Body)
			}
			if got := m.Header[broker.HeaderContentType]; got != broker.ContentTypeJSON {
				e.Errorf("the message made by NewJSON arrived with header %s = %q; want %q", broker.HeaderContentType, got, broker.ContentTypeJSON)
			}
		}
		e.ack(d)
	}
	e.nothing(src, fmt.Sprintf("a batch of %d messages was published once", n+1))
}

// testPublishClosed: after Close, Publish returns an error wrapping
// broker.ErrPublisherClosed and sends nothing; Close is idempotent.
func testPublishClosed(e *env) {
	p := e.publisher()
	ctx, cancel := context.WithTimeout(context.Background(), e.h.Timeout)
	defer cancel()
	if err := p.Close(ctx); err != nil {
		e.Errorf("Publisher.Close = %v; want nil", err)
	}
	if err := p.Close(ctx); err != nil {
		e.Errorf("a second Publisher.Close = %v; want nil (Close is idempotent)", err)
	}
	m := msg("closed", 0)
	err := p.Publish(ctx, e.f.PublishDestination, &m)
	if !errors.Is(err, broker.ErrPublisherClosed) {
		e.Errorf("Publish after Close = %v; want an error wrapping broker.ErrPublisherClosed", err)
	}
	e.nothing(e.source(1), "a Publish after Close must send nothing")
}

// testPublishContext: Publish is bounded by its context. With a context
// already cancelled, or past its deadline, it returns an error wrapping the
// context's; a deadline that ends during a Publish ends the Publish too; and
// the publisher works as before afterwards.
func testPublishContext(e *env) {
	p := e.publisher()
	dest := e.f.PublishDestination
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	m := msg("context", 0)
	if err := p.Publish(cancelled, dest, &m); !errors.Is(err, context.Canceled) {
		e.Errorf("Publish with a cancelled context = %v; want an error wrapping context.Canceled", err)
	}
	expired, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	if err := p.Publish(expired, dest, &m); !errors.Is(err, context.DeadlineExceeded) {
		e.Errorf("Publish with a context past its deadline = %v; want an error wrapping context.DeadlineExceeded", err)
	}

	// A deadline that passes while a large batch is being published: the
	// batch may be taken in time (nil) or not (an error wrapping
	// DeadlineExceeded), but Publish must not run on long past it.
	const n, deadline, grace = 1000, 20 * time.Millisecond, time.Second
	big := make([]*broker.Message, n)
	for i := range big {
		mi := msg("deadline", i)
		big[i] = &mi
	}
	short, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- p.Publish(short, dest, big...) }()
	select {
	case err := <-done:
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			e.Errorf("Publish(%d messages) with a %v deadline = %v; want nil or an error wrapping context.DeadlineExceeded", n, deadline, err)
		}
	case <-time.After(deadline + grace):
		e.Errorf("Publish(%d messages) with a %v deadline had not returned after %v; want it to return when its deadline passes", n, deadline, time.Since(start).Round(time.Millisecond))
		select {
		case <-done:
		case <-time.After(e.h.Timeout):
			e.Fatalf("Publish with a %v deadline had not returned after %v", deadline, e.h.Timeout)
		}
	}

	live := msg("live", 0)
	ctx, cancel := context.WithTimeout(context.Background(), e.h.Timeout)
	defer cancel()
	if err := p.Publish(ctx, dest, &live); err != nil {
		e.Fatalf("Publish with a live context after the ones that ended = %v; want nil", err)
	}
	// What the ended contexts cut short may or may not have arrived; the
	// live message must, after them.
	src := e.source(n + 2)
	for i := 0; ; i++ {
		if i > n+2 {
			e.Fatalf("received %d messages without the one published with a live context", i)
		}
		d := e.receive(src, "a message was published with a live context after Publish calls whose contexts ended")
		e.ack(d)
		if string(d.Message().Body) == string(live.Body) {
			break
		}
	}
}

// testPublishUnknown: Publish to a destination that does not exist returns
// an error, and does not break the publisher: the next Publish to a real
// destination succeeds.
func testPublishUnknown(e *env) {
	p := e.publisher()
	ctx, cancel := context.WithTimeout(context.Background(), e.h.Timeout)
	defer cancel()
	m := msg("unknown", 0)
	if err := p.Publish(ctx, e.f.UnknownDestination, &m); err == nil {
		e.Errorf("Publish(%q), a destination that does not exist, = nil; want an error (Capabilities.UnknownDestination)", e.f.UnknownDestination)
	}
	ok := msg("known", 0)
	if err := p.Publish(ctx, e.f.PublishDestination, &ok); err != nil {
		e.Fatalf("Publish(%q) after a Publish to an unknown destination = %v; want nil (the publisher goes on working)", e.f.PublishDestination, err)
	}
	src := e.source(1)
	d := e.receive(src, "a message was published after a refused one")
	if got := string(d.Message().Body); got != string(ok.Body) {
		e.Errorf("received %s; want %q", describe(d.Message()), ok.Body)
	}
	e.ack(d)
}
