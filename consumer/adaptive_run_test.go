package consumer_test

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/consumer/internal/plot"
)

func TestWithAdaptiveConcurrencyRefusesInvalidConfig(t *testing.T) {
	b := memory.NewBroker()
	h := consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil })
	for _, a := range []consumer.Adaptive{{Min: 5}, {Min: -1}, {Tolerance: 0.9}, {Backoff: 1}, {Window: -3}} {
		_, err := consumer.New(newSource(t, b, "q", 4), h, consumer.WithConcurrency(4), consumer.WithAdaptiveConcurrency(a))
		if !errors.Is(err, broker.ErrInvalidConfig) {
			t.Errorf("New(WithConcurrency(4), WithAdaptiveConcurrency(%+v)) error = %v; want one wrapping broker.ErrInvalidConfig", a, err)
		}
	}
}

// A dependency that fails every call shrinks the limit to Min (the
// failures are retried, not lost); once it is back, the limit grows back
// to the concurrency, and every message is handled once.
func TestAdaptiveConcurrencyFollowsFailures(t *testing.T) {
	const n, msgs = 8, 400
	b := memory.NewBroker()
	var down atomic.Bool
	down.Store(true)
	var handled [msgs]atomic.Int32
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if down.Load() {
			return errors.New("dependency down")
		}
		time.Sleep(time.Millisecond) // long enough for the workers to overlap
		i, err := strconv.Atoi(string(m.Body))
		if err != nil {
			return err
		}
		handled[i].Add(1)
		return nil
	})
	c, err := consumer.New(newSource(t, b, "q", n), h, consumer.WithLogger(quiet), consumer.WithConcurrency(n),
		consumer.WithMaxDeliveries(1_000_000), consumer.WithAdaptiveConcurrency(consumer.Adaptive{Min: 2}))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Stats().Limit; got != n {
		t.Errorf("Stats().Limit before Run = %d; want the concurrency, %d", got, n)
	}
	for i := range msgs {
		if err := b.Publish(context.Background(), "q", &broker.Message{Body: []byte(strconv.Itoa(i))}); err != nil {
			t.Fatal(err)
		}
	}
	// Sample the limit while the consumer runs: it never leaves [Min, n].
	var outOfBounds atomic.Int64
	sampled := make(chan struct{})
	stopSampling := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stopSampling:
				return
			case <-time.After(time.Millisecond):
			}
			if l := c.Stats().Limit; l < 2 || l > n {
				outOfBounds.Store(int64(l))
			}
		}
	}()
	stop := runConsumer(t, c)
	waitFor(t, "the limit to shrink to Min while every call fails", func() bool { return c.Stats().Limit == 2 })
	down.Store(false)
	waitFor(t, "the limit to grow back to the concurrency", func() bool { return c.Stats().Limit == n })
	waitFor(t, "every message handled", func() bool { return c.Stats().Handled == msgs })
	close(stopSampling)
	<-sampled
	if err := stop(); err != nil {
		t.Errorf("Run: %v", err)
	}
	if l := outOfBounds.Load(); l != 0 {
		t.Errorf("Stats().Limit = %d at some point; want within [2, %d]", l, n)
	}
	for i := range handled {
		if got := handled[i].Load(); got != 1 {
			t.Errorf("message %d handled %d times; want once", i, got)
		}
	}
	if st := c.Stats(); st.Failed == 0 || st.DeadLettered != 0 {
		t.Errorf("Stats() = %+v; want failures while down, none dead-lettered", st)
	}
}

// dependency is what the handlers of the must-show test call: it serves at
// most servers calls at once (0: no bound), first come first served, each
// taking service; the test changes both over time.
type dependency struct {
	mu      sync.Mutex
	servers int
	service time.Duration
	busy    int
	queue   []chan struct{} // calls waiting for a server, oldest first
}

type depState struct {
	servers int
	service time.Duration
}

func (d *dependency) set(s depState) {
	d.mu.Lock()
	d.servers, d.service = s.servers, s.service
	d.grant()
	d.mu.Unlock()
}

// grant hands free servers to waiting calls. The caller holds d.mu.
func (d *dependency) grant() {
	for len(d.queue) > 0 && (d.servers == 0 || d.busy < d.servers) {
		close(d.queue[0])
		d.queue = d.queue[1:]
		d.busy++
	}
}

func (d *dependency) waiting() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.queue)
}

func (d *dependency) call(ctx context.Context) error {
	d.mu.Lock()
	if len(d.queue) == 0 && (d.servers == 0 || d.busy < d.servers) {
		d.busy++
	} else {
		ch := make(chan struct{})
		d.queue = append(d.queue, ch)
		d.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			d.mu.Lock()
			defer d.mu.Unlock()
			for i, w := range d.queue {
				if w == ch {
					d.queue = append(d.queue[:i], d.queue[i+1:]...)
					return ctx.Err()
				}
			}
			d.busy-- // granted meanwhile: give the server back
			d.grant()
			return ctx.Err()
		}
		d.mu.Lock()
	}
	service := d.service
	d.mu.Unlock()
	time.Sleep(service)
	d.mu.Lock()
	d.busy--
	d.grant()
	d.mu.Unlock()
	return nil
}

// slowdown is a scenario of the must-show test: the dependency's state
// before and after, and during the slow stretch.
type slowdown struct {
	name         string
	normal, slow depState
}

// sample is what the must-show test records every 100ms of one run.
type sample struct {
	inFlight, limit, waiting int
	handled                  int64
}

// Issue 14, must show: "Adaptive concurrency: a handler whose latency rises
// 10× for 20 s: in-flight count over time, throughput before/during/after
// vs fixed concurrency." Two scenarios, each run with fixed concurrency 32
// and with adaptive concurrency (max 32), all four at once on one machine:
//
//   - overloaded: the dependency serves 32 calls at once in 10ms; for the
//     slow stretch it serves 8 at once in 25ms, the others wait their turn,
//     so the handler's latency at 32 in flight rises 10× (to 100ms).
//   - slower: the dependency is not overloaded, just 10× slower (100ms),
//     its latency the same whatever the load.
//
// Every 100ms it samples Stats().InFlight and Stats().Limit (and how many
// calls wait at the dependency), writes them to adaptive-concurrency.csv and
// draws adaptive-concurrency.png in $QUEUEKIT_ARTIFACTS (else a temporary
// directory), and logs throughput before, during and after the stretch. It
// asserts that every message was handled once; the figures are for the
// record. Small by default (3s, 4s, 3s); QUEUEKIT_FULL=1 runs 20s, 20s,
// 20s.
func TestAdaptiveConcurrencyMustShow(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for 10s (60s with QUEUEKIT_FULL=1)")
	}
	before, during, after := 3*time.Second, 4*time.Second, 3*time.Second
	if os.Getenv("QUEUEKIT_FULL") == "1" {
		before, during, after = 20*time.Second, 20*time.Second, 20*time.Second
	}
	const n = 32
	const every = 100 * time.Millisecond
	scenarios := []slowdown{
		{"overloaded", depState{32, 10 * time.Millisecond}, depState{8, 25 * time.Millisecond}},
		{"slower", depState{0, 10 * time.Millisecond}, depState{0, 100 * time.Millisecond}},
	}
	modes := []string{"fixed", "adaptive"}
	total := before + during + after
	samples := int(total / every)

	type runResult struct {
		samples   []sample
		published int
		err       error
	}
	results := make([][]runResult, len(scenarios))
	deps := make([][]*dependency, len(scenarios))
	for i, sc := range scenarios {
		results[i] = make([]runResult, len(modes))
		deps[i] = make([]*dependency, len(modes))
		for j := range modes {
			deps[i][j] = &dependency{}
			deps[i][j].set(sc.normal)
		}
	}
	start := time.Now().Add(200 * time.Millisecond) // all runs set up by then
	var wg sync.WaitGroup
	for i := range scenarios {
		for j, mode := range modes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := &results[i][j]
				r.samples, r.published, r.err = mustShowRun(deps[i][j], mode == "adaptive", n, start, samples, every)
			}()
		}
	}
	// The timeline: the same for every run.
	time.Sleep(time.Until(start.Add(before)))
	for i, sc := range scenarios {
		for j := range modes {
			deps[i][j].set(sc.slow)
		}
	}
	time.Sleep(time.Until(start.Add(before + during)))
	for i, sc := range scenarios {
		for j := range modes {
			deps[i][j].set(sc.normal)
		}
	}
	wg.Wait()
	for i, sc := range scenarios {
		for j, mode := range modes {
			if err := results[i][j].err; err != nil {
				t.Errorf("%s, %s: %v", sc.name, mode, err)
			}
		}
	}
	if t.Failed() {
		return
	}

	// The figures.
	b0, b1 := int(before/every), int((before+during)/every)
	rate := func(s []sample, from, to int) float64 {
		return float64(s[to-1].handled-s[from].handled) / (float64(to-1-from) * every.Seconds())
	}
	mean := func(s []sample, from, to int, f func(sample) int) float64 {
		sum := 0
		for _, x := range s[from:to] {
			sum += f(x)
		}
		return float64(sum) / float64(to-from)
	}
	t.Logf("slow stretch from %v to %v of %v; concurrency %d; sampled every %v", before, before+during, total, n, every)
	for i, sc := range scenarios {
		var rates [2][3]float64
		for j, mode := range modes {
			s := results[i][j].samples
			// Skip the first second of each phase: the change settling.
			settle := int(time.Second / every)
			rates[j] = [3]float64{rate(s, 0, b0), rate(s, b0+settle, b1), rate(s, b1+settle, len(s))}
			t.Logf("%s, %s: messages/s before %.0f, during %.0f, after %.0f; during: in flight %.1f, limit %.1f, calls waiting at the dependency %.1f; %d messages, each handled once",
				sc.name, mode, rates[j][0], rates[j][1], rates[j][2],
				mean(s, b0+settle, b1, func(x sample) int { return x.inFlight }),
				mean(s, b0+settle, b1, func(x sample) int { return x.limit }),
				mean(s, b0+settle, b1, func(x sample) int { return x.waiting }),
				results[i][j].published)
		}
		t.Logf("%s: adaptive/fixed throughput before %.2f, during %.2f, after %.2f",
			sc.name, rates[1][0]/rates[0][0], rates[1][1]/rates[0][1], rates[1][2]/rates[0][2])
	}

	dir := os.Getenv("QUEUEKIT_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := writeMustShowCSV(filepath.Join(dir, "adaptive-concurrency.csv"), scenarios, modes, func(i, j int) []sample { return results[i][j].samples }, every); err != nil {
		t.Fatal(err)
	}
	chart := plot.Chart{
		Title:  fmt.Sprintf("Adaptive vs fixed concurrency (%d): the dependency slow from %gs to %gs", n, before.Seconds(), (before + during).Seconds()),
		XLabel: "seconds",
		Step:   every.Seconds(),
	}
	shade := [2]float64{before.Seconds(), (before + during).Seconds()}
	for i, sc := range scenarios {
		series := func(j int, f func(sample) float64) []float64 {
			s := results[i][j].samples
			y := make([]float64, len(s))
			for k := range s {
				y[k] = f(s[k])
			}
			return y
		}
		throughput := func(j int) []float64 {
			s := results[i][j].samples
			y := make([]float64, len(s))
			w := int(time.Second / every)
			for k := range s {
				from := max(0, k-w)
				if k == from {
					y[k] = 0
					continue
				}
				y[k] = float64(s[k].handled-s[from].handled) / (float64(k-from) * every.Seconds())
			}
			return y
		}
		title := map[string]string{
			"overloaded": "Overloaded (8 at once, 25ms)",
			"slower":     "Slower (100ms, no bound)",
		}[sc.name]
		chart.Panels = append(chart.Panels,
			plot.Panel{Title: title, Shade: shade, YMax: 40, Series: []plot.Series{
				{Name: "fixed in flight", Color: plot.Gray, Y: series(0, func(x sample) float64 { return float64(x.inFlight) })},
				{Name: "adaptive in flight", Color: plot.Blue, Y: series(1, func(x sample) float64 { return float64(x.inFlight) })},
				{Name: "adaptive limit", Color: plot.Orange, Dashed: true, Y: series(1, func(x sample) float64 { return float64(x.limit) })},
			}},
			plot.Panel{Title: "Messages/s (last 1s)", Shade: shade, LogMin: 10, Series: []plot.Series{
				{Name: "fixed", Color: plot.Gray, Y: throughput(0)},
				{Name: "adaptive", Color: plot.Blue, Y: throughput(1)},
			}},
		)
	}
	f, err := os.Create(filepath.Join(dir, "adaptive-concurrency.png"))
	if err != nil {
		t.Fatal(err)
	}
	if err := chart.PNG(f); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s and %s", filepath.Join(dir, "adaptive-concurrency.csv"), filepath.Join(dir, "adaptive-concurrency.png"))
}

// mustShowRun runs one consumer of the must-show test against dep, with a
// backlog kept topped up until the last sample, sampling its Stats every
// interval from start; then it lets the consumer finish what was published
// and checks that each message was handled once.
func mustShowRun(dep *dependency, adaptive bool, n int, start time.Time, samples int, every time.Duration) ([]sample, int, error) {
	b := memory.NewBroker()
	defer b.Close()
	src, err := b.Source("q", memory.SourceConfig{Prefetch: n})
	if err != nil {
		return nil, 0, err
	}
	var mu sync.Mutex
	handled := map[int]int{}
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if err := dep.call(ctx); err != nil {
			return err
		}
		i, err := strconv.Atoi(string(m.Body))
		if err != nil {
			return err
		}
		mu.Lock()
		handled[i]++
		mu.Unlock()
		return nil
	})
	opts := []consumer.Option{consumer.WithLogger(quiet), consumer.WithConcurrency(n)}
	if adaptive {
		opts = append(opts, consumer.WithAdaptiveConcurrency(consumer.Adaptive{}))
	}
	c, err := consumer.New(src, h, opts...)
	if err != nil {
		return nil, 0, err
	}

	// The feeder keeps a backlog of at least 4n messages until told to stop.
	published := 0
	publish := func(k int) error {
		msgs := make([]*broker.Message, k)
		for i := range msgs {
			msgs[i] = &broker.Message{Body: []byte(strconv.Itoa(published + i))}
		}
		if err := b.Publish(context.Background(), "q", msgs...); err != nil {
			return err
		}
		published += k
		return nil
	}
	if err := publish(8 * n); err != nil {
		return nil, 0, err
	}
	stopFeeding := make(chan struct{})
	fed := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stopFeeding:
				fed <- nil
				return
			case <-time.After(2 * time.Millisecond):
			}
			if b.Stats("q").Ready < 4*n {
				if err := publish(4 * n); err != nil {
					fed <- err
					return
				}
			}
		}
	}()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- c.Run(ctx) }()

	out := make([]sample, samples)
	for k := range out {
		time.Sleep(time.Until(start.Add(time.Duration(k) * every)))
		st := c.Stats()
		out[k] = sample{inFlight: st.InFlight, limit: st.Limit, waiting: dep.waiting(), handled: st.Handled}
	}
	close(stopFeeding)
	if err := <-fed; err != nil {
		return nil, 0, err
	}
	deadline := time.Now().Add(2 * time.Minute)
	for c.Stats().Handled < int64(published) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	if err := c.Shutdown(sctx); err != nil {
		return nil, 0, fmt.Errorf("Shutdown: %w", err)
	}
	if err := <-ran; err != nil && !errors.Is(err, consumer.ErrConsumerClosed) {
		return nil, 0, fmt.Errorf("Run: %w", err)
	}
	st := c.Stats()
	if st.Handled != int64(published) || st.Failed != 0 {
		return nil, 0, fmt.Errorf("Stats() = %+v; want %d handled, none failed", st, published)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(handled) != published {
		return nil, 0, fmt.Errorf("%d distinct messages handled; want %d", len(handled), published)
	}
	for i, k := range handled {
		if k != 1 || i < 0 || i >= published {
			return nil, 0, fmt.Errorf("message %d handled %d times; want once", i, k)
		}
	}
	return out, published, nil
}

// writeMustShowCSV writes one row per sample: the time, then for each
// scenario and mode the handlers in flight, the limit, the calls waiting at
// the dependency and the messages handled so far.
func writeMustShowCSV(path string, scenarios []slowdown, modes []string, samples func(i, j int) []sample, every time.Duration) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	head := []string{"t_s"}
	for _, sc := range scenarios {
		for _, mode := range modes {
			for _, col := range []string{"in_flight", "limit", "dependency_waiting", "handled"} {
				head = append(head, sc.name+"_"+mode+"_"+col)
			}
		}
	}
	_ = w.Write(head)
	for k := range samples(0, 0) {
		row := []string{strconv.FormatFloat((time.Duration(k) * every).Seconds(), 'f', 1, 64)}
		for i := range scenarios {
			for j := range modes {
				x := samples(i, j)[k]
				row = append(row, strconv.Itoa(x.inFlight), strconv.Itoa(x.limit), strconv.Itoa(x.waiting), strconv.FormatInt(x.handled, 10))
			}
		}
		_ = w.Write(row)
	}
	w.Flush()
	if err := w.Error(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// BenchmarkAdaptiveConsumer is what WithAdaptiveConcurrency costs per
// message: consumer.Consumer on broker/memory with a no-op handler, with
// and without it, in the same run (ns/op is ns per message).
func BenchmarkAdaptiveConsumer(b *testing.B) {
	for _, conc := range []int{1, 8} {
		for _, adaptive := range []bool{false, true} {
			b.Run(fmt.Sprintf("adaptive=%v/c=%d", adaptive, conc), func(b *testing.B) {
				mb, src := prepare(b, conc)
				ctx, cancel := context.WithCancel(context.Background())
				var handled atomic.Int64
				n := int64(b.N)
				h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
					if handled.Add(1) == n {
						cancel()
					}
					return nil
				})
				opts := []consumer.Option{consumer.WithConcurrency(conc), consumer.WithLogger(quiet)}
				if adaptive {
					opts = append(opts, consumer.WithAdaptiveConcurrency(consumer.Adaptive{}))
				}
				c, err := consumer.New(src, h, opts...)
				if err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				b.ResetTimer()
				if err := c.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
					b.Fatal(err)
				}
				b.StopTimer()
				if st := mb.Stats("bench"); st.Acked != b.N {
					b.Fatalf("acked %d of %d", st.Acked, b.N)
				}
			})
		}
	}
}
