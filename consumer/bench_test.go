package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/retry"
)

// BenchmarkConsumer measures the runtime's cost per message on broker/memory
// against baselines run in the same process, so that ratios hold on a noisy
// machine:
//
//   - bare-channel: a channel of messages, filled before the timer starts,
//     and a worker pool calling the handler (the floor: no hand-off between
//     goroutines, no settlement);
//   - bare-channel-fed: a producer goroutine, started inside the timer,
//     feeds a channel of capacity 2*c (the prefetch the memory benchmarks
//     use) while the workers receive, call the handler and acknowledge (mark
//     the message settled) — the same work a broker's delivery path does,
//     written by hand on a channel;
//   - handwritten-chain: the same loop doing by hand what the full chain does
//     (recover, metrics, a retry whose backoff is built only after a failure,
//     a per-attempt timeout);
//   - raw-memory-loop/handwritten-memory-loop: workers calling
//     Receive/handle/Ack on a broker/memory source directly, without and with
//     the hand-written chain (the broker's own cost, without the runtime);
//   - queuekit and queuekit-chain: consumer.Consumer on broker/memory, without
//     middleware and with Chain(Metrics, Recover, Retry, Timeout);
//   - queuekit-fed: queuekit with a producer publishing inside the timer
//     while the consumer runs, at most 4*c messages ahead of the handler (the
//     broker's side of bare-channel-fed: a small backlog in steady state,
//     where the others consume a backlog of b.N published before the timer);
//   - queuekit-chansource: consumer.Consumer, no middleware, on a Source that
//     is a bare channel with no-op settlement — the runtime's own cost, to set
//     against bare-channel without the broker's; queuekit-chansource-leased
//     the same with deliveries under a lease (broker.Leased, as Kafka's).
//
// Each reports ns/msg (ns/op, one op = one message), allocs/msg and, where
// the platform says, cpu-ns/op: the CPU time of the whole process (all
// threads, the garbage collector's included) per message while the timer
// ran. On a shared machine ns/op counts the time other processes held the
// CPUs; cpu-ns/op does not, so its ratios are the steadier ones.
func BenchmarkConsumer(b *testing.B) {
	for _, conc := range []int{1, 8} {
		b.Run(fmt.Sprintf("bare-channel/c=%d", conc), func(b *testing.B) { benchChannel(b, conc, false) })
		b.Run(fmt.Sprintf("bare-channel-fed/c=%d", conc), func(b *testing.B) { benchChannelFed(b, conc) })
		b.Run(fmt.Sprintf("handwritten-chain/c=%d", conc), func(b *testing.B) { benchChannel(b, conc, true) })
		b.Run(fmt.Sprintf("raw-memory-loop/c=%d", conc), func(b *testing.B) { benchMemoryLoop(b, conc, false) })
		b.Run(fmt.Sprintf("handwritten-memory-loop/c=%d", conc), func(b *testing.B) { benchMemoryLoop(b, conc, true) })
		b.Run(fmt.Sprintf("queuekit/c=%d", conc), func(b *testing.B) { benchConsumer(b, conc, false) })
		b.Run(fmt.Sprintf("queuekit-chain/c=%d", conc), func(b *testing.B) { benchConsumer(b, conc, true) })
		b.Run(fmt.Sprintf("queuekit-fed/c=%d", conc), func(b *testing.B) { benchConsumerFed(b, conc) })
		b.Run(fmt.Sprintf("queuekit-chansource/c=%d", conc), func(b *testing.B) { benchChanSource(b, conc, false) })
		b.Run(fmt.Sprintf("queuekit-chansource-leased/c=%d", conc), func(b *testing.B) { benchChanSource(b, conc, true) })
	}
}

// cpuMeter measures the process's CPU time over a benchmark's timed part.
type cpuMeter struct {
	start time.Duration
	ok    bool
}

func startCPU() cpuMeter {
	start, ok := processCPU()
	return cpuMeter{start: start, ok: ok}
}

// report reports the CPU time since startCPU per op as cpu-ns/op.
func (m cpuMeter) report(b *testing.B) {
	end, ok := processCPU()
	if m.ok && ok && b.N > 0 {
		b.ReportMetric(float64(end-m.start)/float64(b.N), "cpu-ns/op")
	}
}

// counters is the metrics work both the hand-written chain and the Metrics
// recorder do: an in-flight gauge, a count and a duration sum per outcome.
type counters struct {
	inFlight, ok, failed, nanos atomic.Int64
}

func (c *counters) HandlerStarted(*broker.Message) { c.inFlight.Add(1) }
func (c *counters) HandlerDone(m *broker.Message, err error, d time.Duration) {
	c.inFlight.Add(-1)
	if err != nil {
		c.failed.Add(1)
	} else {
		c.ok.Add(1)
	}
	c.nanos.Add(int64(d))
}

var benchPolicy = retry.MaxAttempts(retry.Exponential(time.Millisecond, 10*time.Millisecond), 3)

func noop(ctx context.Context, m *broker.Message) error { return nil }

// handwritten does by hand what Chain(Metrics, Recover, Retry, Timeout) does.
func handwritten(ctx context.Context, m *broker.Message, c *counters) (err error) {
	c.inFlight.Add(1)
	start := time.Now()
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		}
		c.HandlerDone(m, err, time.Since(start))
	}()
	var bo backoff.BackOff
	for {
		actx, cancel := context.WithTimeout(ctx, time.Second)
		err = noop(actx, m)
		cancel()
		if err == nil || retry.IsPermanent(err) {
			return err
		}
		if bo == nil {
			bo = benchPolicy.NewBackOff()
		}
		d := bo.NextBackOff()
		if d == backoff.Stop {
			return err
		}
		time.Sleep(d)
	}
}

func benchChannel(b *testing.B, conc int, chain bool) {
	msgs := make([]broker.Message, b.N)
	ch := make(chan *broker.Message, b.N)
	for i := range msgs {
		msgs[i] = broker.Message{ID: "m", Body: []byte("body")}
		ch <- &msgs[i]
	}
	close(ch)
	var c counters
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	cpu := startCPU()
	var wg sync.WaitGroup
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for m := range ch {
				if chain {
					_ = handwritten(ctx, m, &c)
				} else {
					_ = noop(ctx, m)
				}
			}
		}()
	}
	wg.Wait()
	cpu.report(b)
}

// fedMessage is a message with the settled flag its worker sets: the "ack"
// of bare-channel-fed.
type fedMessage struct {
	m       broker.Message
	settled bool
}

// benchChannelFed is bare-channel with a producer and acknowledgements: the
// producer sends each message into a channel of capacity 2*conc while the
// workers take them, call the handler and mark them settled, all inside the
// timer. Each message is received by one worker only, after the channel
// send, so the flag needs no atomic; every flag is checked after the timer.
func benchChannelFed(b *testing.B, conc int) {
	msgs := make([]fedMessage, b.N)
	for i := range msgs {
		msgs[i].m = broker.Message{ID: "m", Body: []byte("body")}
	}
	ch := make(chan *fedMessage, 2*conc)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	cpu := startCPU()
	go func() {
		for i := range msgs {
			ch <- &msgs[i]
		}
		close(ch)
	}()
	var wg sync.WaitGroup
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for fm := range ch {
				if err := noop(ctx, &fm.m); err == nil {
					fm.settled = true
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	cpu.report(b)
	for i := range msgs {
		if !msgs[i].settled {
			b.Fatalf("message %d not settled", i)
		}
	}
}

func prepare(b *testing.B, conc int) (*memory.Broker, broker.Source) {
	mb := memory.NewBroker()
	body := []byte("body")
	for range b.N {
		if err := mb.Publish(context.Background(), "bench", &broker.Message{Body: body}); err != nil {
			b.Fatal(err)
		}
	}
	src, err := mb.Source("bench", memory.SourceConfig{Prefetch: 2 * conc})
	if err != nil {
		b.Fatal(err)
	}
	warmHeap(b.N)
	return mb, src
}

// warmHeap gives the heap n*256 bytes of freed memory before the timer, as a
// running service's heap has: without it, every delivery of a backlog of
// b.N messages published just before would land on pages the process never
// touched, and the consuming side would pay a page fault per 4 KiB (7-8 µs
// each on a small VM: ~300 of the ~550 ns per message measured so) that a
// service in steady state, whose collector recycles its memory, does not.
// QUEUEKIT_BENCH_COLD_HEAP=1 leaves it out.
func warmHeap(n int) {
	if os.Getenv("QUEUEKIT_BENCH_COLD_HEAP") != "" {
		return
	}
	garbage := make([][]byte, 0, n)
	for range n {
		garbage = append(garbage, make([]byte, 256))
	}
	runtime.KeepAlive(garbage)
	garbage = nil
	runtime.GC()
}

func benchMemoryLoop(b *testing.B, conc int, chain bool) {
	_, src := prepare(b, conc)
	defer src.Close(context.Background())
	var c counters
	var left atomic.Int64
	left.Store(int64(b.N))
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	cpu := startCPU()
	var wg sync.WaitGroup
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for left.Add(-1) >= 0 {
				d, err := src.Receive(ctx)
				if err != nil {
					b.Error(err)
					return
				}
				m := d.Message()
				if chain {
					err = handwritten(ctx, m, &c)
				} else {
					err = noop(ctx, m)
				}
				if err == nil {
					err = d.Ack(ctx)
				}
				if err != nil {
					b.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	cpu.report(b)
}

func benchConsumer(b *testing.B, conc int, chain bool) {
	mb, src := prepare(b, conc)
	ctx, cancel := context.WithCancel(context.Background())
	var handled atomic.Int64
	n := int64(b.N)
	var h consumer.Handler = consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if handled.Add(1) == n {
			cancel()
		}
		return nil
	})
	if chain {
		var c counters
		h = consumer.Chain(middleware.Metrics(&c), middleware.Recover(), middleware.Retry(benchPolicy), middleware.Timeout(time.Second))(h)
	}
	c, err := consumer.New(src, h, consumer.WithConcurrency(conc), consumer.WithLogger(quiet))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	cpu := startCPU()
	if err := c.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		b.Fatal(err)
	}
	b.StopTimer()
	cpu.report(b)
	if st := mb.Stats("bench"); st.Acked != b.N {
		b.Fatalf("acked %d of %d", st.Acked, b.N)
	}
}

// benchConsumerFed is benchConsumer without the backlog published before the
// timer: a producer publishes the messages one by one while the consumer
// runs, taking a token before each publish that the handler gives back, so
// that it runs at most 4*conc messages ahead.
func benchConsumerFed(b *testing.B, conc int) {
	mb := memory.NewBroker()
	src, err := mb.Source("bench", memory.SourceConfig{Prefetch: 2 * conc})
	if err != nil {
		b.Fatal(err)
	}
	tokens := make(chan struct{}, 4*conc)
	ctx, cancel := context.WithCancel(context.Background())
	var handled atomic.Int64
	n := int64(b.N)
	c, err := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		<-tokens
		if handled.Add(1) == n {
			cancel()
		}
		return nil
	}), consumer.WithConcurrency(conc), consumer.WithLogger(quiet))
	if err != nil {
		b.Fatal(err)
	}
	body := []byte("body")
	b.ReportAllocs()
	b.ResetTimer()
	cpu := startCPU()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range b.N {
			tokens <- struct{}{}
			if err := mb.Publish(context.Background(), "bench", &broker.Message{Body: body}); err != nil {
				b.Error(err)
				return
			}
		}
	}()
	if err := c.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		b.Fatal(err)
	}
	b.StopTimer()
	cpu.report(b)
	wg.Wait()
	if st := mb.Stats("bench"); st.Acked != b.N {
		b.Fatalf("acked %d of %d", st.Acked, b.N)
	}
}

// chanSource is the cheapest possible Source: a channel of deliveries whose
// settlement does nothing. It isolates the runtime's own per-message cost.
type chanSource struct{ ch chan broker.Delivery }

func (s *chanSource) Receive(ctx context.Context) (broker.Delivery, error) {
	select {
	case d := <-s.ch:
		return d, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (s *chanSource) Close(context.Context) error { return nil }

type chanDelivery struct{ m broker.Message }

func (d *chanDelivery) Message() *broker.Message                        { return &d.m }
func (d *chanDelivery) Ack(context.Context) error                       { return nil }
func (d *chanDelivery) Requeue(context.Context) error                   { return nil }
func (d *chanDelivery) DeadLetter(context.Context, broker.Reason) error { return nil }

// benchChanSource runs the consumer on a chanSource of b.N deliveries;
// with leased, each delivery is under one lease (broker.Leased, as Kafka's
// are: one lease per consumer-group generation), which measures what the
// runtime adds per message to tie a handler's context to its lease.
func benchChanSource(b *testing.B, conc int, leased bool) {
	src := &chanSource{ch: make(chan broker.Delivery, b.N)}
	lease, end := context.WithCancel(context.Background())
	defer end()
	ds := make([]leasedDelivery, b.N)
	for i := range ds {
		ds[i].m = broker.Message{ID: "m", Body: []byte("body")}
		if leased {
			ds[i].lease = lease
			src.ch <- &ds[i]
		} else {
			src.ch <- &ds[i].chanDelivery
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var handled atomic.Int64
	n := int64(b.N)
	c, err := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if handled.Add(1) == n {
			cancel()
		}
		return nil
	}), consumer.WithConcurrency(conc), consumer.WithLogger(quiet))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	cpu := startCPU()
	if err := c.Run(ctx); err != nil {
		b.Fatal(err)
	}
	cpu.report(b)
}
