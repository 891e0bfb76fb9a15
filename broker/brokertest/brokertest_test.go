package brokertest_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/brokertest"
	"github.com/queuekit/queuekit/broker/memory"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// A mutant is the memory broker with one deliberate contract violation.
// The suite must fail the named cases against it: a conformance suite that
// passes a broken adapter checks nothing.
var mutants = []struct {
	name string
	want []string // cases that must fail
}{
	{"requeue-acks", []string{"a requeued message is delivered again"}},
	{"close-acks", []string{"Close gives unsettled deliveries back to a new source"}},
	{"attempt-stuck", []string{"a requeued message is delivered again with Attempt 2", "the consumer runtime dead-letters a failing message after the delivery budget"}},
	{"ack-requeues", []string{"an acked message is not delivered again", "the consumer runtime handles every published message once"}},
	{"second-settle-ok", []string{"settling a delivery twice returns ErrAlreadySettled"}},
	{"receive-ignores-ctx", []string{"Receive returns the context's error when the context is cancelled, and loses no message"}},
	{"dead-letter-drops-reason", []string{"DeadLetter moves the message to the dead-letter destination with the reason in its headers"}},
	{"no-prefetch", []string{"Receive blocks while prefetch deliveries are unsettled"}},
	{"stale-acks", []string{"a stale delivery cannot be settled and its message is redelivered"}},
	{"close-ignores-ctx", []string{"Close with a cancelled context returns at once and unsettled deliveries come back to a new source"}},
	{"publish-reverses-batch", []string{"Publish sends a batch in order with its key, headers, ID and JSON content type"}},
	{"publish-after-close", []string{"Publish after Close returns ErrPublisherClosed"}},
	{"publish-ignores-ctx", []string{"Publish honours its context's cancellation and deadline"}},
	{"publish-unknown-accepted", []string{"Publish to an unknown destination returns an error"}},
	{"pause-ignored", []string{"a paused source hands out nothing until Resume, and loses and duplicates nothing"}},
	{"status-always-connected", []string{"Status is connected after the first Receive and not after Close"}},
	{"events-after-close", []string{"the event hook gets EventConnected and is not called after Close"}},
	{"backlog-empty", []string{"Backlog counts what was published until it is consumed"}},
	{"dl-list-consumes", []string{"dead letters: List shows each with its reason and changes neither their count nor their order"}},
	{"dl-list-no-reason", []string{"dead letters: List shows each with its reason and changes neither their count nor their order"}},
	{"dl-list-ignores-cursor", []string{"dead letters: List pages cover every dead letter exactly once"}},
	{"dl-filter-ignored", []string{"dead letters: List and Count filter by reason text, source and ids"}},
	{"dl-redrive-keeps-attempts", []string{"dead letters: Redrive sends a dead letter back with Attempt 1 and counts its redrives"}},
	{"dl-redrive-no-count", []string{"dead letters: Redrive sends a dead letter back with Attempt 1 and counts its redrives"}},
	{"dl-redrive-no-limit", []string{"dead letters: Redrive skips a dead letter at the redrive limit and it stays"}},
	{"dl-redrive-removes-first", []string{"dead letters: Redrive skips a dead letter whose source does not exist and loses nothing"}},
	{"dl-dry-run-ignored", []string{"dead letters: DryRun changes nothing"}},
	{"dl-purge-all", []string{"dead letters: Purge deletes exactly the selected dead letters"}},
	{"dl-purge-unknown-ok", []string{"dead letters: unknown ids are reported missing and change nothing"}},
	{"dl-empty-selects-all", []string{"dead letters: an empty selection is refused with ErrEmptySelection"}},
	{"dl-redrive-to-header-source", []string{"dead letters: Redrive does not send a dead letter to a source its headers name"}},
	{"dl-redrive-creates-destination", []string{"dead letters: Redrive refuses a Destination that does not exist"}},
	{"dl-redrive-to-own-dead-letters", []string{"dead letters: Redrive refuses the dead-letter destination itself as Destination"}},
}

const mutantEnv = "BROKERTEST_MUTANT"

var (
	caseBrokersMu sync.Mutex
	caseBrokers   = map[*testing.T]*memory.Broker{}
)

// caseBroker returns the broker of the case t, made on first use and closed
// when the case ends: the fixtures of one case are on the same broker, as
// brokertest.Harness.Setup requires.
func caseBroker(t *testing.T) *memory.Broker {
	caseBrokersMu.Lock()
	defer caseBrokersMu.Unlock()
	if b := caseBrokers[t]; b != nil {
		return b
	}
	b := memory.NewBroker()
	caseBrokers[t] = b
	t.Cleanup(func() {
		b.Close()
		caseBrokersMu.Lock()
		delete(caseBrokers, t)
		caseBrokersMu.Unlock()
	})
	return b
}

// mutantChildren bounds how many mutant children run at once. A child spends
// nearly all of its ~10-20 s waiting (the suite's Quiet and Timeout windows
// against the in-memory broker) and well under a second of CPU, so running
// several at once shortens the test without loading the machine; the
// -test.parallel limit (GOMAXPROCS) would allow only 2.
const mutantChildren = 8

// TestSuiteFailsBrokenAdapters runs the suite against each mutant in a
// child process and checks that the expected cases fail, with a message.
func TestSuiteFailsBrokenAdapters(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the suite once per mutant in a child process")
	}
	type result struct {
		out []byte
		err error
	}
	// The children are independent (each has its own process and memory
	// brokers): start them all, at most mutantChildren at a time, and check
	// each one's output in its subtest, in order.
	results := make([]chan result, len(mutants))
	sem := make(chan struct{}, mutantChildren)
	for i, m := range mutants {
		results[i] = make(chan result, 1)
		go func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			cmd := exec.Command(os.Args[0], "-test.run=^TestMutant$", "-test.v", "-test.count=1", "-test.timeout=2m")
			cmd.Env = append(os.Environ(), mutantEnv+"="+m.name)
			out, err := cmd.CombinedOutput()
			results[i] <- result{out, err}
		}()
	}
	for i, m := range mutants {
		// Every child's result is received, even after a subtest fails, so
		// that no goroutine outlives the test.
		r := <-results[i]
		t.Run(m.name, func(t *testing.T) {
			out, err := r.out, r.err
			if err == nil {
				t.Fatalf("the suite passed the %s mutant; want it to fail %q\n%s", m.name, m.want, out)
			}
			for _, c := range m.want {
				line := "--- FAIL: TestMutant/" + strings.ReplaceAll(c, " ", "_")
				if !strings.Contains(string(out), line) {
					t.Errorf("against the %s mutant, the case %q did not fail; want it to\n%s", m.name, c, out)
				}
			}
			if strings.Contains(string(out), "panic:") {
				t.Errorf("the suite panicked against the %s mutant; want test failures only\n%s", m.name, out)
			}
		})
	}
}

// TestMutant is the child process of TestSuiteFailsBrokenAdapters.
func TestMutant(t *testing.T) {
	mut := os.Getenv(mutantEnv)
	if mut == "" {
		t.Skip("child process of TestSuiteFailsBrokenAdapters")
	}
	var n atomic.Int64
	brokertest.Run(t, brokertest.Harness{
		Capabilities: brokertest.Capabilities{
			DeliveryCount: true, DurableDeliveryCount: true, Prefetch: true,
			DelayedRequeue: true, StaleDeliveries: true,
			PublishedID: true, UnknownDestination: true,
		},
		Timeout: 2 * time.Second,
		Setup: func(t *testing.T) brokertest.Fixture {
			b := caseBroker(t)
			queue := fmt.Sprintf("mutant-%d", n.Add(1))
			return brokertest.Fixture{
				Destination:           queue,
				DeadLetterDestination: memory.DeadLetterQueue(queue),
				PublishDestination:    queue,
				UnknownDestination:    queue + ".unknown",
				NewPublisher: func(t *testing.T) broker.Publisher {
					return &mutPublisher{Publisher: b.Publisher(), known: queue, mut: mut}
				},
				Publish: func(ctx context.Context, msgs ...broker.Message) error {
					for _, m := range msgs {
						if err := b.Publish(ctx, queue, &m); err != nil {
							return err
						}
					}
					return nil
				},
				NewSource: func(t *testing.T, prefetch int) broker.Source {
					if mut == "no-prefetch" {
						prefetch = 1000
					}
					src, err := b.Source(queue, memory.SourceConfig{Prefetch: prefetch})
					if err != nil {
						t.Fatal(err)
					}
					return &mutSource{Source: src, b: b, mut: mut}
				},
				DeadLetters: func(ctx context.Context, t *testing.T, n int) []broker.Message {
					for {
						dead := b.DeadLetters(queue)
						if len(dead) >= n || ctx.Err() != nil {
							return dead
						}
						time.Sleep(5 * time.Millisecond)
					}
				},
				MakeStale: func(t *testing.T, src broker.Source) {
					src.(*mutSource).Source.DropConnection()
				},
			}
		},
	})
}

// mutPublisher is a memory publisher that, like a RabbitMQ or Kafka one,
// refuses a destination other than the fixture's (unless mutated).
type mutPublisher struct {
	*memory.Publisher
	known string
	mut   string
}

func (p *mutPublisher) Publish(ctx context.Context, dest string, msgs ...*broker.Message) error {
	switch p.mut {
	case "publish-reverses-batch":
		msgs = slices.Clone(msgs)
		slices.Reverse(msgs)
	case "publish-ignores-ctx":
		ctx = context.WithoutCancel(ctx)
	}
	if dest != p.known && p.mut != "publish-unknown-accepted" {
		return fmt.Errorf("mutant: no destination %q", dest)
	}
	return p.Publisher.Publish(ctx, dest, msgs...)
}

func (p *mutPublisher) Close(ctx context.Context) error {
	if p.mut == "publish-after-close" {
		return nil
	}
	return p.Publisher.Close(ctx)
}

type mutSource struct {
	*memory.Source
	b    *memory.Broker
	mut  string
	outs []*mutDelivery

	hookMu sync.Mutex
	hook   func(broker.Event)
}

func (s *mutSource) Pause(ctx context.Context) error {
	if s.mut == "pause-ignored" {
		return nil
	}
	return s.Source.Pause(ctx)
}

func (s *mutSource) Status() broker.Status {
	if s.mut == "status-always-connected" {
		return broker.Status{Connected: true}
	}
	return s.Source.Status()
}

func (s *mutSource) SetEventHook(f func(broker.Event)) {
	s.hookMu.Lock()
	s.hook = f
	s.hookMu.Unlock()
	s.Source.SetEventHook(f)
}

func (s *mutSource) Backlog(ctx context.Context) (broker.Backlog, error) {
	b, err := s.Source.Backlog(ctx)
	if s.mut == "backlog-empty" {
		b.Messages = 0
	}
	return b, err
}

func (s *mutSource) Receive(ctx context.Context) (broker.Delivery, error) {
	if _, ok := ctx.Deadline(); s.mut == "receive-ignores-ctx" && !ok {
		// Ignore cancellation but keep deadlines, so that the cases that
		// wait for Receive to time out still end.
		ctx = context.WithoutCancel(ctx)
	}
	d, err := s.Source.Receive(ctx)
	if err != nil {
		return nil, err
	}
	switch m := d.Message(); {
	case s.mut == "attempt-stuck":
		m.Attempt = 1
	case s.mut == "dl-redrive-keeps-attempts" && broker.Redriven(m.Header) > 0:
		// The attempts of the dead letter carried over to its copy.
		m.Attempt += 2
	case s.mut == "dl-redrive-no-count":
		delete(m.Header, broker.HeaderRedriven)
	}
	md := &mutDelivery{Delivery: d, mut: s.mut}
	if s.mut == "close-acks" {
		s.outs = append(s.outs, md) // only used by single-goroutine cases and the runtime's Close
	}
	return md, nil
}

func (s *mutSource) Close(ctx context.Context) error {
	switch s.mut {
	case "close-acks":
		for _, d := range s.outs {
			d.Delivery.Ack(context.Background())
		}
	case "close-ignores-ctx":
		if ctx.Err() != nil {
			time.Sleep(closeBoundExceeded) // a final commit or leave that does not look at ctx
		}
	case "events-after-close":
		s.hookMu.Lock()
		hook := s.hook
		s.hook = nil
		s.hookMu.Unlock()
		if hook != nil {
			// A goroutine of the source that still runs after Close.
			time.AfterFunc(20*time.Millisecond, func() {
				hook(broker.Event{Kind: broker.EventReconnecting, Err: errors.New("mutant: late event")})
			})
		}
	}
	return s.Source.Close(ctx)
}

func (s *mutSource) DeadLetters() broker.DeadLetters {
	return &mutDeadLetters{DeadLetters: s.Source.DeadLetters(), b: s.b, mut: s.mut}
}

// mutDeadLetters is the memory broker's broker.DeadLetters with one
// deliberate violation of its contract.
type mutDeadLetters struct {
	broker.DeadLetters
	b   *memory.Broker
	mut string
}

func (d *mutDeadLetters) List(ctx context.Context, q broker.DeadLetterQuery) (broker.DeadLetterPage, error) {
	switch d.mut {
	case "dl-list-ignores-cursor":
		q.Cursor = ""
	case "dl-filter-ignored":
		q.DeadLetterFilter = broker.DeadLetterFilter{}
	}
	p, err := d.DeadLetters.List(ctx, q)
	switch {
	case err != nil || len(p.Items) == 0:
	case d.mut == "dl-list-consumes":
		// A browse that takes the messages off the dead-letter queue.
		var ids []string
		for _, it := range p.Items {
			ids = append(ids, it.ID)
		}
		d.DeadLetters.Purge(ctx, broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: ids}}, false)
	case d.mut == "dl-list-no-reason":
		for i := range p.Items {
			p.Items[i].Reason, p.Items[i].HasReason = broker.Reason{}, false
		}
	}
	return p, err
}

func (d *mutDeadLetters) Count(ctx context.Context, f broker.DeadLetterFilter) (int, error) {
	if d.mut == "dl-filter-ignored" {
		f = broker.DeadLetterFilter{}
	}
	return d.DeadLetters.Count(ctx, f)
}

func (d *mutDeadLetters) Redrive(ctx context.Context, sel broker.DeadLetterSelection, opts broker.RedriveOptions) (broker.DeadLetterResult, error) {
	switch d.mut {
	case "dl-redrive-no-limit":
		opts.MaxRedrives = -1
	case "dl-dry-run-ignored":
		opts.DryRun = false
	case "dl-empty-selects-all":
		sel.All = true
	case "dl-redrive-removes-first":
		if !opts.DryRun && sel.Check() == nil {
			return d.redriveRemovingFirst(ctx, sel, opts)
		}
	case "dl-redrive-to-header-source":
		if opts.Destination == "" && sel.Check() == nil {
			return d.redriveToHeaderSource(ctx, sel, opts)
		}
	}
	res, err := d.DeadLetters.Redrive(ctx, sel, opts)
	switch {
	case opts.Destination == "":
	case d.mut == "dl-redrive-creates-destination" && errors.Is(err, broker.ErrNoSource) && len(res.Done) == 0 && len(res.Skipped) == 0:
		// The destination was refused: create it, as a publish would.
		if err := d.b.Publish(ctx, opts.Destination); err != nil {
			return res, err
		}
		return d.DeadLetters.Redrive(ctx, sel, opts)
	case d.mut == "dl-redrive-to-own-dead-letters" && errors.Is(err, broker.ErrInvalidConfig):
		return res, nil // the refusal swallowed: "nothing to do"
	}
	return res, err
}

// redriveToHeaderSource sends each selected dead letter to the destination
// its reason names, as if headers chose where a redrive writes.
func (d *mutDeadLetters) redriveToHeaderSource(ctx context.Context, sel broker.DeadLetterSelection, opts broker.RedriveOptions) (broker.DeadLetterResult, error) {
	p, err := d.DeadLetters.List(ctx, broker.DeadLetterQuery{DeadLetterFilter: sel.DeadLetterFilter, Limit: broker.MaxListLimit})
	if err != nil {
		return broker.DeadLetterResult{}, err
	}
	out := broker.DeadLetterResult{Done: []string{}, DryRun: opts.DryRun}
	for _, dl := range p.Items {
		one := opts
		one.Destination = dl.Reason.Source
		res, _ := d.DeadLetters.Redrive(ctx, broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: []string{dl.ID}}}, one)
		out.Done = append(out.Done, res.Done...)
		out.Skipped = append(out.Skipped, res.Skipped...)
		out.Missing = append(out.Missing, res.Missing...)
	}
	return out, out.Err()
}

// redriveRemovingFirst removes each selected dead letter before it
// publishes its copy, so that a dead letter whose copy cannot be published
// (its source is gone) is lost instead of skipped.
func (d *mutDeadLetters) redriveRemovingFirst(ctx context.Context, sel broker.DeadLetterSelection, opts broker.RedriveOptions) (broker.DeadLetterResult, error) {
	dry := opts
	dry.DryRun = true
	would, _ := d.DeadLetters.Redrive(ctx, sel, dry)
	var failed []broker.Skipped
	for _, s := range would.Skipped {
		if errors.Is(s, broker.ErrNoSource) {
			one := broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: []string{s.ID}}}
			d.DeadLetters.Purge(ctx, one, false) // removed; the publish that follows fails
			failed = append(failed, s)
		}
	}
	res, err := d.DeadLetters.Redrive(ctx, sel, opts)
	if len(failed) > 0 && (err == nil || errors.Is(err, broker.ErrDeadLetterNotFound)) {
		res.Missing = nil
		res.Skipped = append(res.Skipped, failed...)
		err = res.Err()
	}
	return res, err
}

func (d *mutDeadLetters) Purge(ctx context.Context, sel broker.DeadLetterSelection, dryRun bool) (broker.DeadLetterResult, error) {
	switch d.mut {
	case "dl-purge-all":
		if len(sel.IDs) > 0 {
			sel = broker.DeadLetterSelection{All: true}
		}
	case "dl-dry-run-ignored":
		dryRun = false
	case "dl-empty-selects-all":
		sel.All = true
	}
	res, err := d.DeadLetters.Purge(ctx, sel, dryRun)
	if d.mut == "dl-purge-unknown-ok" && errors.Is(err, broker.ErrDeadLetterNotFound) {
		res.Missing = nil
		err = res.Err()
	}
	return res, err
}

type mutDelivery struct {
	broker.Delivery
	mut string
}

func (d *mutDelivery) Ack(ctx context.Context) error {
	var err error
	switch d.mut {
	case "ack-requeues":
		err = d.Delivery.Requeue(ctx)
	case "stale-acks":
		if err = d.Delivery.Ack(ctx); errors.Is(err, broker.ErrStaleDelivery) {
			err = nil
		}
	default:
		err = d.Delivery.Ack(ctx)
	}
	return d.filter(err)
}

func (d *mutDelivery) Requeue(ctx context.Context) error {
	if d.mut == "requeue-acks" {
		return d.filter(d.Delivery.Ack(ctx))
	}
	return d.filter(d.Delivery.Requeue(ctx))
}

func (d *mutDelivery) DeadLetter(ctx context.Context, r broker.Reason) error {
	if d.mut == "dead-letter-drops-reason" {
		r = broker.Reason{}
	}
	return d.filter(d.Delivery.DeadLetter(ctx, r))
}

func (d *mutDelivery) RequeueAfter(ctx context.Context, delay time.Duration) error {
	return d.filter(d.Delivery.(broker.DelayedRequeuer).RequeueAfter(ctx, delay))
}

func (d *mutDelivery) filter(err error) error {
	if d.mut == "second-settle-ok" && errors.Is(err, broker.ErrAlreadySettled) {
		return nil
	}
	return err
}

// closeBoundExceeded is how long the close-ignores-ctx mutant's Close takes
// with a done context: past the suite's 1 s bound, and short of the mutant
// harness's 2 s Timeout, so that the case sees it return and leaks nothing.
const closeBoundExceeded = 1500 * time.Millisecond
