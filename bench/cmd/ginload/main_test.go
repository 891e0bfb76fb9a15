package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestPercentile(t *testing.T) {
	var xs []time.Duration
	for i := 1; i <= 1000; i++ {
		xs = append(xs, time.Duration(i)*time.Millisecond)
	}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{
		{0.5, 500 * time.Millisecond},
		{0.99, 990 * time.Millisecond},
		{0.999, 999 * time.Millisecond},
		{1, 1000 * time.Millisecond},
	} {
		if got := percentile(xs, tc.p); got != tc.want {
			t.Errorf("percentile(1..1000 ms, %v) = %v; want %v", tc.p, got, tc.want)
		}
	}
	if got := percentile(nil, 0.5); got != 0 {
		t.Errorf("percentile(nil, 0.5) = %v; want 0", got)
	}
}

// The load sends what examples/gin expects, and counts 2xx, other
// statuses and keys apart.
func TestLoadSendsOrdersAndCountsAnswers(t *testing.T) {
	var n atomic.Int64
	keys := map[string]bool{}
	var dupKey atomic.Bool
	var bad atomic.Value
	keyc := make(chan string, 1<<16)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" || r.URL.Path != "/orders" {
			bad.Store(r.Method + " " + r.URL.Path + " " + r.Header.Get("Content-Type"))
		}
		select {
		case keyc <- r.Header.Get("Idempotency-Key"):
		default:
		}
		if n.Add(1)%5 == 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	}))
	defer srv.Close()
	res, err := load(context.Background(), options{url: srv.URL + "/orders", clients: 4, duration: 300 * time.Millisecond,
		warmup: 50 * time.Millisecond, item: "book", idempotency: true, timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	srv.Close() // waits for the handlers of requests the end of the run cut off
	close(keyc)
	for k := range keyc {
		if k == "" || keys[k] {
			dupKey.Store(true)
		}
		keys[k] = true
	}
	if v := bad.Load(); v != nil {
		t.Errorf("a request was %v; want POST /orders application/json", v)
	}
	if dupKey.Load() {
		t.Error("an order went without an Idempotency-Key of its own")
	}
	if res.ok == 0 || res.statuses[http.StatusServiceUnavailable] == 0 || res.errs != 0 {
		t.Errorf("ok %d, 503 %d, errors %d; want some 2xx, some 503, no errors", res.ok, res.statuses[503], res.errs)
	}
	if s := res.String("x"); !strings.Contains(s, "non-2xx") || !strings.HasPrefix(s, "x  orders/s") {
		t.Errorf("String() = %q", s)
	}
}
