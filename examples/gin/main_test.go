package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/queuekit/queuekit/consumer"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func do(t *testing.T, method, url, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	var out map[string]any
	b, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(b, &out)
	return resp.StatusCode, out
}

// The service accepts orders over HTTP, processes them in the background,
// reports readiness, pauses and resumes intake, and shuts down without losing
// an accepted order.
func TestServiceAcceptsProcessesAndShutsDownCleanly(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, ln, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	defer http.DefaultClient.CloseIdleConnections()

	waitReady := func(want int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			code, _ := do(t, "GET", base+"/readyz", "")
			if code == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("GET /readyz = %d; want %d", code, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitReady(http.StatusOK)

	if code, _ := do(t, "POST", base+"/orders", `{"id": "x"}`); code != http.StatusBadRequest {
		t.Errorf("POST /orders with missing fields = %d; want 400", code)
	}
	const n = 40
	for i := range n {
		q := 1 + i%3
		if i == 7 {
			q = 5000 // over the limit: dead-lettered at once
		}
		if code, _ := do(t, "POST", base+"/orders", fmt.Sprintf(`{"id":"o-%d","sku":"book","quantity":%d}`, i, q)); code != http.StatusAccepted {
			t.Fatalf("POST /orders = %d; want 202", code)
		}
	}

	if code, _ := do(t, "POST", base+"/admin/consumers/orders/pause", ""); code != http.StatusOK {
		t.Fatalf("pause = %d; want 200", code)
	}
	waitReady(http.StatusServiceUnavailable)
	if code, _ := do(t, "POST", base+"/admin/consumers/nope/pause", ""); code != http.StatusNotFound {
		t.Errorf("pause of an unknown consumer = %d; want 404", code)
	}
	if code, _ := do(t, "POST", base+"/admin/consumers/orders/resume", ""); code != http.StatusOK {
		t.Fatalf("resume = %d; want 200", code)
	}
	waitReady(http.StatusOK)

	deadline := time.Now().Add(20 * time.Second)
	for {
		_, st := do(t, "GET", base+"/orders/stats", "")
		orders := st["orders"].(map[string]any)
		if orders["Acked"].(float64) == n-1 && orders["DeadLettered"].(float64) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats = %v; want %d acked and 1 dead-lettered", st, n-1)
		}
		time.Sleep(10 * time.Millisecond)
	}

	if code, _ := do(t, "GET", base+"/livez", ""); code != http.StatusOK {
		t.Errorf("GET /livez = %d; want 200", code)
	}
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		fmt.Sprintf(`queuekit_messages_handled_total{consumer="orders",outcome="ack"} %d`, n-1),
		`queuekit_messages_handled_total{consumer="orders",outcome="dead-letter"} 1`,
	} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("GET /metrics lacks %q", want)
		}
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run = %v; want nil after a graceful shutdown", err)
	}
}

// Orders accepted right up to the shutdown are either handled or still
// queued when the service stops: none is acknowledged without being handled.
func TestShutdownUnderLoadLosesNoAcceptedOrder(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var s *service
	ready := make(chan struct{})
	go func() {
		done <- runWith(ctx, ln, slog.New(slog.NewTextHandler(io.Discard, nil)), func(sv *service) { s = sv; close(ready) })
	}()
	<-ready
	defer http.DefaultClient.CloseIdleConnections()
	accepted := 0
	for i := range 200 {
		if code, _ := do(t, "POST", base+"/orders", fmt.Sprintf(`{"id":"o-%d","sku":"pen","quantity":1}`, i)); code == http.StatusAccepted {
			accepted++
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run = %v", err)
	}
	st := s.broker.Stats("orders")
	if st.Acked+st.Ready != accepted || st.Unacked != 0 || st.DeadLettered != 0 {
		t.Errorf("after shutdown: %+v; want acked + queued = %d accepted orders, nothing unacked", st, accepted)
	}
	if h := s.sup.Health(); h.Runners[0].State != consumer.StateStopped {
		t.Errorf("consumer state after shutdown = %v; want stopped", h.Runners[0].State)
	}
	t.Logf("accepted %d: %d handled before shutdown, %d left queued", accepted, st.Acked, st.Ready)
}
