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

func testConfig(t *testing.T, args ...string) config {
	t.Helper()
	cfg, err := parseConfig(args, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// startInProcess runs the service in this process on a loopback port.
func startInProcess(t *testing.T, cfg config) (base string, s *service, stop func() error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	built := make(chan *service, 1)
	go func() {
		done <- runWith(ctx, cfg, ln, slog.New(slog.NewTextHandler(io.Discard, nil)), func(s *service) { built <- s })
	}()
	select {
	case s = <-built:
	case err := <-done:
		cancel()
		t.Fatalf("run = %v before the service was built", err)
	}
	stopped := false
	stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		err := <-done
		http.DefaultClient.CloseIdleConnections()
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return "http://" + ln.Addr().String(), s, stop
}

func waitReady(t *testing.T, base string, want int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
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

func waitStatus(t *testing.T, base, id, want string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, body := do(t, "GET", base+"/orders/"+id, "")
		if code == http.StatusOK && body["status"] == want {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET /orders/%s = %d %v; want status %q", id, code, body, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The service accepts orders over HTTP, processes them in the background,
// reports their status, readiness, consumer states and metrics, pauses and
// resumes intake, and shuts down cleanly.
func TestServiceAcceptsProcessesAndReports(t *testing.T) {
	base, s, stop := startInProcess(t, testConfig(t))
	waitReady(t, base, http.StatusOK)

	code, body := do(t, "POST", base+"/orders", `{"item": "book", "quantity": 2}`)
	if code != http.StatusAccepted {
		t.Fatalf("POST /orders = %d %v; want 202", code, body)
	}
	id, _ := body["id"].(string)
	if !strings.HasPrefix(id, "ord_") {
		t.Fatalf("POST /orders answered id %q; want ord_…", id)
	}
	got := waitStatus(t, base, id, statusProcessed)
	if got["item"] != "book" || got["quantity"] != float64(2) || got["attempts"] != float64(1) {
		t.Errorf("GET /orders/%s = %v; want item book, quantity 2, attempts 1", id, got)
	}
	if code, _ := do(t, "GET", base+"/orders/ord_nope", ""); code != http.StatusNotFound {
		t.Errorf("GET /orders/ord_nope = %d; want 404", code)
	}

	// A message that reaches the queue by another way than the API and
	// cannot be decoded is dead-lettered at once, and its order is failed.
	if err := s.backend.publish(context.Background(), consumer.Message{ID: "ord_bad", Body: []byte(`{"item": 7}`)}); err != nil {
		t.Fatal(err)
	}
	if err := s.backend.publish(context.Background(), consumer.Message{ID: "ord_big", Body: []byte(`{"id":"ord_big","item":"x","quantity":5000}`)}); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, base, "ord_bad", statusFailed)
	waitStatus(t, base, "ord_big", statusFailed)

	// Pause: readiness off, intake stops, orders stay queued; resume.
	if code, _ := do(t, "POST", base+"/admin/consumers/orders/pause", ""); code != http.StatusOK {
		t.Fatalf("pause = %d; want 200", code)
	}
	waitReady(t, base, http.StatusServiceUnavailable)
	_, pausedBody := do(t, "POST", base+"/orders", `{"item": "pen", "quantity": 1}`)
	pausedID, _ := pausedBody["id"].(string)
	if _, list := do(t, "GET", base+"/admin/consumers", ""); !strings.Contains(fmt.Sprint(list), "paused") {
		t.Errorf("GET /admin/consumers = %v; want the orders consumer paused", list)
	}
	time.Sleep(50 * time.Millisecond) // a paused consumer must not process it meanwhile
	if _, st := do(t, "GET", base+"/orders/"+pausedID, ""); st["status"] != statusAccepted {
		t.Errorf("order posted while paused: status %v; want accepted (not processed while paused)", st["status"])
	}
	if code, _ := do(t, "POST", base+"/admin/consumers/nope/pause", ""); code != http.StatusNotFound {
		t.Errorf("pause of an unknown consumer = %d; want 404", code)
	}
	if code, _ := do(t, "POST", base+"/admin/consumers/orders/resume", ""); code != http.StatusOK {
		t.Fatalf("resume = %d; want 200", code)
	}
	waitReady(t, base, http.StatusOK)
	waitStatus(t, base, pausedID, statusProcessed)

	if code, _ := do(t, "GET", base+"/healthz", ""); code != http.StatusOK {
		t.Errorf("GET /healthz = %d; want 200", code)
	}
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`queuekit_messages_handled_total{consumer="orders",outcome="ack"} 2`,
		`queuekit_messages_handled_total{consumer="orders",outcome="dead-letter"} 2`,
		`go_goroutines`,
	} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("GET /metrics lacks %q", want)
		}
	}
	if err := stop(); err != nil {
		t.Fatalf("run = %v; want nil after a graceful shutdown", err)
	}
}

// Bad input gets a 400 with a message that says what is wrong.
func TestPostOrderRejectsBadInput(t *testing.T) {
	base, s, _ := startInProcess(t, testConfig(t))
	for _, tc := range []struct{ body, want string }{
		{``, "empty body"},
		{`{"item": "book"`, "malformed JSON"},
		{`{"item": "book", "quantity": "2"}`, `"quantity" must be a JSON integer`},
		{`{"item": "book", "quantity": 2.5}`, `"quantity" must be a JSON integer`},
		{`{"quantity": 2}`, `"item" is required`},
		{`{"item": "  ", "quantity": 2}`, `"item" is required`},
		{`{"item": "book", "quantity": 0}`, `"quantity" must be an integer from 1 to 1000`},
		{`{"item": "book", "quantity": 1001}`, `"quantity" must be an integer from 1 to 1000`},
		{`{"item": "book", "quantity": 2, "price": 3}`, `unknown field "price"`},
		{`{"item": "book", "quantity": 2} {}`, "one JSON object"},
		{`[1, 2]`, "must be a JSON object"},
		{`{"item": "` + strings.Repeat("x", 101) + `", "quantity": 1}`, "at most 100 characters"},
	} {
		code, body := do(t, "POST", base+"/orders", tc.body)
		msg, _ := body["error"].(string)
		if code != http.StatusBadRequest || !strings.Contains(msg, tc.want) {
			t.Errorf("POST /orders %s = %d %q; want 400 with %q", tc.body, code, msg, tc.want)
		}
	}
	code, _ := do(t, "POST", base+"/orders", `{"item": "`+strings.Repeat("x", 70<<10)+`", "quantity": 1}`)
	if code != http.StatusRequestEntityTooLarge {
		t.Errorf("POST /orders with a 70 KiB body = %d; want 413", code)
	}
	if a, _, _ := s.store.counts(); a != 0 {
		t.Errorf("%d orders accepted from bad input; want 0", a)
	}
}

// Orders accepted right up to the shutdown are either processed or still
// queued when the service stops, and readiness is off from the start of the
// shutdown.
func TestShutdownUnderLoadLosesNoAcceptedOrder(t *testing.T) {
	base, s, stop := startInProcess(t, testConfig(t, "-process-time", "5ms"))
	waitReady(t, base, http.StatusOK)
	accepted := 0
	for range 200 {
		if code, _ := do(t, "POST", base+"/orders", `{"item":"pen","quantity":1}`); code == http.StatusAccepted {
			accepted++
		}
	}
	if err := stop(); err != nil {
		t.Fatalf("run = %v", err)
	}
	a, processed, failed := s.store.counts()
	left, _ := s.backend.left(context.Background())
	if a != accepted || processed+left != accepted || failed != 0 {
		t.Errorf("after shutdown: accepted %d (clients saw %d), processed %d, left %d, failed %d; want processed + left = accepted",
			a, accepted, processed, left, failed)
	}
	if h := s.sup.Health(); h.Runners[0].State != consumer.StateStopped {
		t.Errorf("consumer state after shutdown = %v; want stopped", h.Runners[0].State)
	}
	if !s.stopping.Load() {
		t.Error("readiness still on after shutdown")
	}
	t.Logf("accepted %d: %d processed before shutdown, %d left queued", accepted, processed, left)
}

func TestParseConfig(t *testing.T) {
	env := map[string]string{"AMQP_URL": "amqp://u:p@h/", "ADDR": ":9090"}
	cfg, err := parseConfig(nil, func(k string) string { return env[k] })
	if err != nil || cfg.amqpURL != "amqp://u:p@h/" || cfg.addr != ":9090" || cfg.queue != "orders" {
		t.Errorf("parseConfig from env = %+v, %v", cfg, err)
	}
	cfg, err = parseConfig([]string{"-addr", ":1"}, func(k string) string { return env[k] })
	if err != nil || cfg.addr != ":1" {
		t.Errorf("flag over env: addr %q, %v; want :1", cfg.addr, err)
	}
	if def := testConfig(t); def.addr != ":8080" || def.amqpURL != "" || def.kafkaBrokers != "" {
		t.Errorf("defaults = %+v; want :8080 on the in-memory broker", def)
	}
	for _, args := range [][]string{
		{"-concurrency", "0"},
		{"-drain-timeout", "0s"},
		{"-process-time", "-1s"},
		{"-queue", " "},
		{"-amqp-queue-type", "stream"},
		{"-log-level", "loud"},
		{"extra"},
	} {
		if _, err := parseConfig(args, func(string) string { return "" }); err == nil {
			t.Errorf("parseConfig(%q) = nil error; want one", args)
		}
	}
	_, err = newBackend(context.Background(), testConfig(t, "-amqp-url", "amqp://x", "-kafka-brokers", "k:9092"), slog.Default())
	if err == nil || !strings.Contains(err.Error(), "not both") {
		t.Errorf("both brokers: %v; want an error", err)
	}
}
