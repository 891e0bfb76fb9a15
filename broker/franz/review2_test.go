package franz_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/franz"
)

// TestReview2HungProduceBoundedByCtx (review 2, R2-2): when the broker
// stops answering produce requests, DeadLetter and RequeueAfter (retry-topic
// write) return at their ctx's end, and Close, called meanwhile, returns at
// its own ctx's end: neither waits for kgo's idempotent producer, which
// keeps a record it has taken. The DeadLetter is not settled: nothing is
// committed past the record. Kafka protocol (in-process kfake cluster,
// whose ControlKey blocks every Produce request until released).
// Correctness bounds only: ctx + 3 s.
func TestReview2HungProduceBoundedByCtx(t *testing.T) {
	t.Parallel()
	for _, what := range []string{"DeadLetter", "RequeueAfterTier"} {
		t.Run(what, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			topic := e.topic(t, "hung-produce", 1)
			group := "g-" + topic
			cfg := e.config(topic, group)
			if what == "RequeueAfterTier" {
				cfg.RetryTopics = []time.Duration{time.Second}
			}
			s, err := franz.NewSource(cfg)
			if err != nil {
				t.Fatal(err)
			}
			release := make(chan struct{})
			var once sync.Once
			unblock := func() { once.Do(func() { close(release) }) }
			t.Cleanup(func() {
				unblock()
				franz.WaitClientsClosed(s)
			})
			if cfg.RetryTopics != nil {
				if err := s.DeclareTopology(t.Context()); err != nil {
					t.Fatal(err)
				}
			}
			e.produceN(t, topic, 0, 1, func(int) string { return "k" })
			d := receive(t, s)
			_, off := partitionOf(t, d.Message().ID)
			e.cluster.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
				e.cluster.KeepControl()
				<-release
				return nil, nil, false
			})

			const opTimeout, closeTimeout = 1500 * time.Millisecond, 500 * time.Millisecond
			octx, ocancel := context.WithTimeout(context.Background(), opTimeout)
			defer ocancel()
			start := time.Now()
			done := make(chan error, 1)
			go func() {
				if what == "DeadLetter" {
					done <- d.DeadLetter(octx, broker.Reason{Err: "x"})
				} else {
					done <- d.(broker.DelayedRequeuer).RequeueAfter(octx, 500*time.Millisecond)
				}
			}()
			time.Sleep(200 * time.Millisecond)
			cctx, ccancel := context.WithTimeout(context.Background(), closeTimeout)
			defer ccancel()
			closed := make(chan error, 1)
			cstart := time.Now()
			go func() { closed <- s.Close(cctx) }()
			select {
			case err := <-closed:
				t.Logf("Close(%v) during the hung write: %v after %v", closeTimeout, err, time.Since(cstart))
			case <-time.After(closeTimeout + 3*time.Second):
				t.Errorf("Close(%v ctx) still blocked after %v during a hung write", closeTimeout, time.Since(cstart))
				unblock()
				<-closed
			}
			select {
			case err = <-done:
				t.Logf("%s during the hung write: %v after %v", what, err, time.Since(start))
			case <-time.After(opTimeout + 3*time.Second):
				t.Errorf("%s(%v ctx) still blocked after %v", what, opTimeout, time.Since(start))
				unblock()
				err = <-done
			}
			if what == "DeadLetter" && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("DeadLetter = %v, want an error wrapping ctx's", err)
			}
			unblock()
			if c, ok := e.committed(t, group, topic)[0]; ok && c > off {
				t.Errorf("committed offset %d past the record at %d whose %s did not finish", c, off, what)
			}
		})
	}
}

// TestReview2ProducingOptionsRefused (review 2, R2-1): kgo options that
// send the Source's retry copies and dead letters, and Publish's messages,
// to another topic than the one named (kgo.DefaultProduceTopicAlways) or
// never send them (kgo.ManualFlushing) are refused by NewSource,
// NewPublisher and NewDeadLetters with an error wrapping
// broker.ErrInvalidConfig that names the option. No cluster: nothing
// connects.
func TestReview2ProducingOptionsRefused(t *testing.T) {
	t.Parallel()
	brokers := []string{"localhost:9092"}
	refused := map[string][]kgo.Opt{
		"DefaultProduceTopicAlways": {kgo.DefaultProduceTopic("other"), kgo.DefaultProduceTopicAlways()},
		"ManualFlushing":            {kgo.ClientID("c"), kgo.ManualFlushing()},
	}
	for name, opts := range refused {
		want := "ClientOptions[1]: kgo." + name
		s, err := franz.NewSource(franz.Config{Brokers: brokers, GroupID: "g", Topic: "t", ClientOptions: opts})
		if err == nil {
			s.Close(t.Context())
		}
		if !errors.Is(err, broker.ErrInvalidConfig) || !strings.Contains(err.Error(), want) {
			t.Errorf("NewSource with kgo.%s = %v, want ErrInvalidConfig naming %s", name, err, want)
		}
		p, err := franz.NewPublisher(franz.PublisherConfig{Brokers: brokers, ClientOptions: opts})
		if err == nil {
			p.Close(t.Context())
		}
		if !errors.Is(err, broker.ErrInvalidConfig) || !strings.Contains(err.Error(), want) {
			t.Errorf("NewPublisher with kgo.%s = %v, want ErrInvalidConfig naming %s", name, err, want)
		}
		d, err := franz.NewDeadLetters(franz.DeadLetterConfig{Brokers: brokers, Topic: "t", ClientOptions: opts})
		if err == nil {
			d.Close(t.Context())
		}
		if !errors.Is(err, broker.ErrInvalidConfig) || !strings.Contains(err.Error(), want) {
			t.Errorf("NewDeadLetters with kgo.%s = %v, want ErrInvalidConfig naming %s", name, err, want)
		}
	}
	// kgo.DefaultProduceTopic alone is harmless: a record's Topic wins.
	p, err := franz.NewPublisher(franz.PublisherConfig{Brokers: brokers, ClientOptions: []kgo.Opt{kgo.DefaultProduceTopic("other")}})
	if err != nil {
		t.Fatalf("NewPublisher with kgo.DefaultProduceTopic alone = %v", err)
	}
	p.Close(t.Context())
}

// TestReview2SourceGroupOptionsRefused (review 2, R2-3): NewSource refuses,
// with an error wrapping broker.ErrInvalidConfig that names the option, the
// kgo options that break the Source or fail only at the first Receive:
// kgo.ShareGroup, kgo.WithContext (the Source owns its clients' lifetime),
// kgo.GroupProtocol (not the "consumer" protocol type kafka-go members
// use), kgo.ServerSideBalancer (KIP-848 groups ignore Config.Balancers and
// the timeouts), and kgo.InstanceID with RetryTopics (the tier groups'
// members would share it). The legitimate ones stay accepted. No cluster:
// nothing connects.
func TestReview2SourceGroupOptionsRefused(t *testing.T) {
	t.Parallel()
	brokers := []string{"localhost:9092"}
	refused := map[string]kgo.Opt{
		"ShareGroup":         kgo.ShareGroup("sg"),
		"WithContext":        kgo.WithContext(context.Background()),
		"GroupProtocol":      kgo.GroupProtocol("x"),
		"ServerSideBalancer": kgo.ServerSideBalancer(),
	}
	for name, o := range refused {
		s, err := franz.NewSource(franz.Config{Brokers: brokers, GroupID: "g", Topic: "t", ClientOptions: []kgo.Opt{kgo.ClientID("c"), o}})
		if err == nil {
			s.Close(t.Context())
		}
		if want := "ClientOptions[1]: kgo." + name; !errors.Is(err, broker.ErrInvalidConfig) || !strings.Contains(err.Error(), want) {
			t.Errorf("NewSource with kgo.%s = %v, want ErrInvalidConfig naming %s", name, err, want)
		}
	}
	s, err := franz.NewSource(franz.Config{Brokers: brokers, GroupID: "g", Topic: "t",
		RetryTopics: []time.Duration{time.Second}, ClientOptions: []kgo.Opt{kgo.InstanceID("i")}})
	if err == nil {
		s.Close(t.Context())
	}
	if !errors.Is(err, broker.ErrInvalidConfig) || !strings.Contains(err.Error(), "kgo.InstanceID") {
		t.Errorf("NewSource with kgo.InstanceID and RetryTopics = %v, want ErrInvalidConfig naming kgo.InstanceID", err)
	}
	ok := []kgo.Opt{kgo.ClientID("c"), kgo.InstanceID("i"), kgo.SASL(), kgo.DialTLSConfig(nil), kgo.WithHooks(),
		kgo.FetchMaxBytes(1 << 20), kgo.MaxConcurrentFetches(2),
		kgo.ConsumePreferringLagFn(kgo.PreferLagAt(10)), kgo.Rack("r"), kgo.RequireStableFetchOffsets(),
		kgo.RequiredAcks(kgo.AllISRAcks()), kgo.RequestRetries(3)}
	s, err = franz.NewSource(franz.Config{Brokers: brokers, GroupID: "g", Topic: "t", ClientOptions: ok})
	if err != nil {
		t.Fatalf("NewSource with legitimate options = %v", err)
	}
	s.Close(t.Context())
}

// TestReview2DeletedTierFallsBackSoon (review 2, R2-4): with its tier topic
// deleted, RequeueAfter falls back to the in-process retry after a few
// metadata answers saying "unknown topic" (the Source's writes retry an
// unknown topic as the Publisher does), not after kgo's default ~15 s of
// retries, and the record comes back. Kafka protocol (in-process kfake
// cluster). The time is logged; the bound asserted is a correctness bound.
func TestReview2DeletedTierFallsBackSoon(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, "tier-deleted", 1)
	group := "g-" + topic
	cfg := e.config(topic, group)
	cfg.RetryTopics = []time.Duration{300 * time.Millisecond}
	s := newSource(t, cfg)
	if err := s.DeclareTopology(t.Context()); err != nil {
		t.Fatal(err)
	}
	e.produceN(t, topic, 0, 1, func(int) string { return "k" })
	// A first retry through the tier: the Source's writer knows the topic.
	d := receive(t, s)
	if err := d.(broker.DelayedRequeuer).RequeueAfter(t.Context(), 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	d = receive(t, s)
	if d.Message().Attempt != 2 {
		t.Fatalf("got %s attempt %d, want the retry (attempt 2)", d.Message().ID, d.Message().Attempt)
	}
	if err := d.Ack(t.Context()); err != nil {
		t.Fatal(err)
	}
	e.produceN(t, topic, 1, 1, func(int) string { return "k" })
	d = receive(t, s)
	tier := franz.RetryTopicName(topic, group, 300*time.Millisecond)
	if _, err := e.adm.DeleteTopics(t.Context(), tier); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	start := time.Now()
	err := d.(broker.DelayedRequeuer).RequeueAfter(context.Background(), 100*time.Millisecond)
	took := time.Since(start)
	t.Logf("RequeueAfter with the tier topic deleted: %v after %v", err, took)
	if err != nil {
		t.Fatalf("RequeueAfter = %v, want nil (the in-process fallback)", err)
	}
	if took > 8*time.Second {
		t.Errorf("RequeueAfter took %v to fall back with the tier topic deleted (kgo's default unknown-topic retries)", took)
	}
	d = receive(t, s)
	if d.Message().Attempt != 2 {
		t.Errorf("redelivered with Attempt %d, want 2", d.Message().Attempt)
	}
	if err := d.Ack(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// TestReview2StatusSaysInconsistentBalancers (review 2, R2-5): a member
// whose balancers share none with the group's other members (here an eager
// range member joined first, as a kafka-go member would; this one has the
// default cooperative-sticky alone) is refused by the coordinator with
// INCONSISTENT_GROUP_PROTOCOL, and its Status says what that means. Kafka
// protocol (in-process kfake cluster).
func TestReview2StatusSaysInconsistentBalancers(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, "balancers", 2)
	group := "g-" + topic
	e.produceN(t, topic, 0, 2, func(i int) string { return "k" + string(rune('0'+i)) })
	cfg := e.config(topic, group)
	cfg.Balancers = []kgo.GroupBalancer{kgo.RangeBalancer()}
	a := newSource(t, cfg)
	receive(t, a)
	b := newSource(t, e.config(topic, group))
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	go b.Receive(ctx) // joins; refused
	var st broker.Status
	for ctx.Err() == nil {
		st = b.Status()
		if st.Err != nil && strings.Contains(st.Err.Error(), "INCONSISTENT_GROUP_PROTOCOL") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("Status of the member refused: %+v", st)
	if st.Err == nil || !strings.Contains(st.Err.Error(), "INCONSISTENT_GROUP_PROTOCOL") {
		t.Fatalf("Status.Err = %v, want INCONSISTENT_GROUP_PROTOCOL", st.Err)
	}
	if !strings.Contains(st.Err.Error(), "see Config.Balancers") || !errors.Is(st.Err, kerr.InconsistentGroupProtocol) {
		t.Errorf("Status.Err = %v, want it to say the other members use another balancer (see Config.Balancers), wrapping kerr.InconsistentGroupProtocol", st.Err)
	}
}

// review2Identity passes an option through a generic function.
func review2Identity[T any](x T) T { return x }

// TestReview2OptionNameForms (review 2, R2-6): the refused options are
// refused in the forms ordinary Go code makes them, whose closures the
// compiler names differently when it inlines them: a constructor taken as
// a func value, an option made in a nested closure or passed through a
// generic helper. No cluster: nothing connects.
func TestReview2OptionNameForms(t *testing.T) {
	t.Parallel()
	forms := map[string]func() kgo.Opt{
		"func value":   func() kgo.Opt { g := kgo.ConsumerGroup; return g("x") },
		"func value 2": func() kgo.Opt { g := kgo.ConsumeRegex; return g() },
		"nested closure": func() kgo.Opt {
			f := func() kgo.Opt { return kgo.ConsumeResetOffset(kgo.NewOffset().AtEnd()) }
			return f()
		},
		"generic": func() kgo.Opt { return review2Identity(kgo.OnPartitionsRevoked(nil)) },
	}
	for name, f := range forms {
		s, err := franz.NewSource(franz.Config{Brokers: []string{"localhost:9092"}, GroupID: "g", Topic: "t", ClientOptions: []kgo.Opt{f()}})
		if err == nil {
			s.Close(t.Context())
		}
		if !errors.Is(err, broker.ErrInvalidConfig) {
			t.Errorf("%s: NewSource = %v, want ErrInvalidConfig", name, err)
		}
	}
}
