// Command ginload measures examples/gin from the outside: N clients, each
// with a keep-alive connection, post orders to POST /orders as fast as the
// service answers, for a duration, and it prints the orders accepted per
// second and the latency percentiles of the accepted ones. Answers other
// than 2xx (503 when the service refuses, 4xx) and transport errors are
// counted, not timed.
//
//	go run ./examples/gin -broker memory -database-url sqlite:/tmp/gin.db &
//	go run ./bench/cmd/ginload -c 32 -d 15s -url http://127.0.0.1:8080/orders
//
// Each order is {"item": <item>, "quantity": 1} with Content-Type
// application/json and, unless -idempotency=false, an Idempotency-Key of
// its own (as a client that may retry sends). The first -warmup of the run
// is not counted.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

type options struct {
	url         string
	clients     int
	duration    time.Duration
	warmup      time.Duration
	item        string
	idempotency bool
	label       string
	timeout     time.Duration
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("ginload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.url, "url", "http://127.0.0.1:8080/orders", "POST /orders URL of examples/gin")
	fs.IntVar(&o.clients, "c", 32, "concurrent clients, each with its own keep-alive connection")
	fs.DurationVar(&o.duration, "d", 15*time.Second, "how long to post orders (after -warmup)")
	fs.DurationVar(&o.warmup, "warmup", 2*time.Second, "how long to post orders before counting")
	fs.StringVar(&o.item, "item", "book", "the orders' item")
	fs.BoolVar(&o.idempotency, "idempotency", true, "send an Idempotency-Key of its own with every order")
	fs.StringVar(&o.label, "label", "", "prefix of the result line")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "per-request timeout")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if o.clients < 1 || o.duration <= 0 || o.warmup < 0 {
		fmt.Fprintln(stderr, "ginload: -c must be at least 1, -d positive, -warmup not negative")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	res, err := load(ctx, o)
	if err != nil {
		fmt.Fprintln(stderr, "ginload:", err)
		return 1
	}
	fmt.Fprintln(stdout, res.String(o.label))
	if res.ok == 0 {
		return 1
	}
	return 0
}

// results are what the counted part of a run measured.
type results struct {
	elapsed   time.Duration
	ok        int
	latencies []time.Duration // of the 2xx answers, sorted
	statuses  map[int]int     // non-2xx answers by status
	errs      int
	firstErr  error
}

func (r results) String(label string) string {
	var b strings.Builder
	if label != "" {
		b.WriteString(label + "  ")
	}
	fmt.Fprintf(&b, "orders/s %.0f  p50 %v  p99 %v  p99.9 %v  max %v  ok %d",
		float64(r.ok)/r.elapsed.Seconds(), round(percentile(r.latencies, 0.5)), round(percentile(r.latencies, 0.99)),
		round(percentile(r.latencies, 0.999)), round(percentile(r.latencies, 1)), r.ok)
	codes := make([]int, 0, len(r.statuses))
	n := 0
	for c, k := range r.statuses {
		codes = append(codes, c)
		n += k
	}
	sort.Ints(codes)
	fmt.Fprintf(&b, "  non-2xx %d", n)
	for _, c := range codes {
		fmt.Fprintf(&b, " (%d: %d)", c, r.statuses[c])
	}
	fmt.Fprintf(&b, "  errors %d", r.errs)
	if r.firstErr != nil {
		fmt.Fprintf(&b, " (first: %v)", r.firstErr)
	}
	return b.String()
}

func round(d time.Duration) time.Duration {
	switch {
	case d >= 10*time.Millisecond:
		return d.Round(100 * time.Microsecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}

// percentile is the p-quantile of sorted (nearest rank); 0 for none.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p+0.999999) - 1 // ceil(n*p) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// load runs the clients: every client posts until the deadline, and counts
// what it got once the warm-up is over.
func load(ctx context.Context, o options) (results, error) {
	tr := &http.Transport{MaxIdleConnsPerHost: o.clients, MaxConnsPerHost: o.clients, IdleConnTimeout: time.Minute}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: o.timeout}
	prefix := make([]byte, 6)
	if _, err := rand.Read(prefix); err != nil {
		return results{}, err
	}
	keyPrefix := "ginload-" + hex.EncodeToString(prefix) + "-"
	body := []byte(fmt.Sprintf(`{"item": %q, "quantity": 1}`, o.item))

	start := time.Now()
	countFrom, end := start.Add(o.warmup), start.Add(o.warmup+o.duration)
	ctx, cancel := context.WithDeadline(ctx, end)
	defer cancel()
	type part struct {
		lat      []time.Duration
		statuses map[int]int
		errs     int
		firstErr error
	}
	parts := make([]part, o.clients)
	var wg sync.WaitGroup
	for i := range parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := &parts[i]
			p.statuses = map[int]int{}
			for n := 0; ; n++ {
				req, err := http.NewRequestWithContext(ctx, http.MethodPost, o.url, bytes.NewReader(body))
				if err != nil {
					p.errs, p.firstErr = p.errs+1, err
					return
				}
				req.Header.Set("Content-Type", "application/json")
				if o.idempotency {
					req.Header.Set("Idempotency-Key", fmt.Sprintf("%s%d-%d", keyPrefix, i, n))
				}
				t0 := time.Now()
				resp, err := client.Do(req)
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
				}
				t1 := time.Now()
				if ctx.Err() != nil || t1.After(end) {
					return // cut off by the end of the run: not counted
				}
				if t0.Before(countFrom) {
					continue
				}
				switch {
				case err != nil:
					p.errs++
					if p.firstErr == nil {
						p.firstErr = err
					}
				case resp.StatusCode/100 == 2:
					p.lat = append(p.lat, t1.Sub(t0))
				default:
					p.statuses[resp.StatusCode]++
				}
			}
		}()
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return results{}, err
	}
	r := results{elapsed: o.duration, statuses: map[int]int{}}
	for _, p := range parts {
		r.latencies = append(r.latencies, p.lat...)
		for c, k := range p.statuses {
			r.statuses[c] += k
		}
		r.errs += p.errs
		if r.firstErr == nil {
			r.firstErr = p.firstErr
		}
	}
	r.ok = len(r.latencies)
	slices.Sort(r.latencies)
	return r, nil
}
