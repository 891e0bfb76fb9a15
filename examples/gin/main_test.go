package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// TestMain checks for leaked goroutines, then deletes the RabbitMQ vhost the
// tests created (after the leak check: deleting it closes whatever is still
// connected there, which would hide a leaked connection) and prints one line
// when tests were skipped for want of a broker.
func TestMain(m *testing.M) {
	code := m.Run()
	if buildOnce.bin != "" { // the service binary the end-to-end tests built
		os.RemoveAll(filepath.Dir(buildOnce.bin))
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak: leaked goroutines:", err)
			code = 1
		}
	}
	if err := testBroker.teardown(); err != nil {
		fmt.Fprintln(os.Stderr, "queuekit:", err)
		code = 1
	}
	if n := skipped.Load(); n > 0 {
		tests := "tests"
		if n == 1 {
			tests = "test"
		}
		printSummary(fmt.Sprintf("queuekit: %d RabbitMQ %s of examples/gin skipped: %s", n, tests, testBroker.why()))
	}
	if n := skippedPostgres.Load(); n > 0 {
		printSummary(fmt.Sprintf("queuekit: %d PostgreSQL tests of examples/gin skipped: no PostgreSQL at QUEUEKIT_POSTGRES_URL (default %s)", n, defaultPostgresURL))
	}
	if p, ok := skippedBrowser.Load().(string); ok {
		printSummary(fmt.Sprintf("queuekit: the admin page's browser test of examples/gin skipped: no Chromium at %s (apt-get install chromium)", p))
	}
	os.Exit(code)
}

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

// testConfig parses args, with a SQLite database of the test's own (in
// t.TempDir) unless args name one.
func testConfig(t *testing.T, args ...string) config {
	t.Helper()
	if !slices.Contains(args, "-database-url") {
		args = append([]string{"-database-url", testDatabase(t)}, args...)
	}
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
	return startOn(t, cfg, ln)
}

// startOn runs the service in this process on ln; base is ln's address.
func startOn(t *testing.T, cfg config, ln net.Listener) (base string, s *service, stop func() error) {
	t.Helper()
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

// waitMetrics polls /metrics until it holds every one of wants.
func waitMetrics(t *testing.T, base string, wants ...string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(base + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var missing []string
		for _, w := range wants {
			if !strings.Contains(string(body), w) {
				missing = append(missing, w)
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET /metrics lacks %q", missing)
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
	if err := s.publish(context.Background(), &broker.Message{ID: "ord_bad", Body: []byte(`{"item": 7}`)}); err != nil {
		t.Fatal(err)
	}
	if err := s.publish(context.Background(), &broker.Message{ID: "ord_big", Body: []byte(`{"id":"ord_big","item":"x","quantity":5000}`)}); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, base, "ord_bad", statusFailed)
	waitStatus(t, base, "ord_big", statusFailed)

	// Pause: readiness off, intake stops, orders stay queued; resume.
	a := newAdminClient(t, base, "")
	if code, body := a.pause("orders"); code != http.StatusOK {
		t.Fatalf("pause = %d %s; want 200", code, body)
	}
	waitReady(t, base, http.StatusServiceUnavailable)
	_, pausedBody := do(t, "POST", base+"/orders", `{"item": "pen", "quantity": 1}`)
	pausedID, _ := pausedBody["id"].(string)
	if _, list := do(t, "GET", base+"/admin/api/runners", ""); !strings.Contains(fmt.Sprint(list), "paused") {
		t.Errorf("GET /admin/api/runners = %v; want the orders consumer paused", list)
	}
	time.Sleep(50 * time.Millisecond) // a paused consumer must not process it meanwhile
	if _, st := do(t, "GET", base+"/orders/"+pausedID, ""); st["status"] != statusAccepted {
		t.Errorf("order posted while paused: status %v; want accepted (not processed while paused)", st["status"])
	}
	if code, _ := a.pause("nope"); code != http.StatusNotFound {
		t.Errorf("pause of an unknown consumer = %d; want 404", code)
	}
	if code, body := a.resume("orders"); code != http.StatusOK {
		t.Fatalf("resume = %d %s; want 200", code, body)
	}
	waitReady(t, base, http.StatusOK)
	waitStatus(t, base, pausedID, statusProcessed)

	if code, _ := do(t, "GET", base+"/healthz", ""); code != http.StatusOK {
		t.Errorf("GET /healthz = %d; want 200", code)
	}
	// An order is marked processed before its ack is counted: poll.
	waitMetrics(t, base,
		`queuekit_messages_handled_total{consumer="orders",outcome="ack"} 2`,
		`queuekit_messages_handled_total{consumer="orders",outcome="dead-letter"} 2`,
		`go_goroutines`,
	)
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
	if a, _, _ := s.counts(); a != 0 {
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
	a, processed, failed := s.counts()
	left := s.leftAtStop
	if a != accepted || processed+left != accepted || failed != 0 {
		t.Errorf("after shutdown: accepted %d (clients saw %d), processed %d, left %d, failed %d; want processed + left = accepted",
			a, accepted, processed, left, failed)
	}
	if h := s.sup.Health(); h.Runners[0].State != consumer.StateStopped {
		t.Errorf("consumer state after shutdown = %v; want stopped", h.Runners[0].State)
	}
	if !s.notReady.Load() || !s.intakeClosed.Load() {
		t.Error("readiness still on after shutdown")
	}
	t.Logf("accepted %d: %d processed before shutdown, %d left queued", accepted, processed, left)
}

func TestParseConfig(t *testing.T) {
	env := map[string]string{"AMQP_URL": "amqp://u:p@h/", "ADDR": ":9090", "ADMIN_TOKEN": "tok"}
	getenv := func(k string) string { return env[k] }
	cfg, err := parseConfig(nil, getenv)
	if err != nil || cfg.amqpURL != "amqp://u:p@h/" || cfg.addr != ":9090" || cfg.queue != "orders" || cfg.adminToken != "tok" {
		t.Errorf("parseConfig from env = %+v, %v", cfg, err)
	}
	cfg, err = parseConfig([]string{"-addr", ":1"}, getenv)
	if err != nil || cfg.addr != ":1" {
		t.Errorf("flag over env: addr %q, %v; want :1", cfg.addr, err)
	}
	// A broker flag wins over both brokers' environment variables.
	cfg, err = parseConfig([]string{"-kafka-brokers", "k:9092"}, getenv)
	if err != nil || cfg.kafkaBrokers != "k:9092" || cfg.amqpURL != "" {
		t.Errorf("-kafka-brokers with AMQP_URL set = %+v, %v; want Kafka only", cfg, err)
	}
	if def, err := parseConfig(nil, func(string) string { return "" }); err != nil || def.addr != ":8080" || def.amqpURL != "" || def.kafkaBrokers != "" || def.brokerKind != "sql" ||
		def.databaseURL != "queuekit-gin.db" || def.shutdownDelay != 0 || len(def.orderIDSecret) != 0 || !def.killSwitch || def.killSwitchRestart != 30*time.Second {
		t.Errorf("defaults = %+v, %v; want :8080 on the SQL queue in queuekit-gin.db, no shutdown delay, no configured order id secret, the kill switch on with a 30s restart timeout", def, err)
	}
	if def, _ := parseConfig(nil, func(string) string { return "" }); def.kafkaClient != "kafka-go" {
		t.Errorf("default -kafka-client = %q; want kafka-go", def.kafkaClient)
	}
	// KAFKA_CLIENT fills in for -kafka-client; the flag wins.
	franzEnv := func(k string) string { return map[string]string{"KAFKA_CLIENT": "franz"}[k] }
	if cfg, err := parseConfig(nil, franzEnv); err != nil || cfg.kafkaClient != "franz" {
		t.Errorf("KAFKA_CLIENT=franz: -kafka-client %q, %v; want franz", cfg.kafkaClient, err)
	}
	if cfg, err := parseConfig([]string{"-kafka-client", "kafka-go"}, franzEnv); err != nil || cfg.kafkaClient != "kafka-go" {
		t.Errorf("-kafka-client kafka-go over KAFKA_CLIENT=franz: %q, %v; want kafka-go", cfg.kafkaClient, err)
	}
	if cfg, err := parseConfig([]string{"-kill-switch=false"}, func(string) string { return "" }); err != nil || cfg.killSwitch {
		t.Errorf("-kill-switch=false: kill switch %v, %v; want off", cfg.killSwitch, err)
	}
	// DATABASE_URL fills in for -database-url; the flag wins.
	pg := func(k string) string {
		return map[string]string{"DATABASE_URL": "postgres://app:pw@db/orders"}[k]
	}
	if cfg, err := parseConfig(nil, pg); err != nil || cfg.databaseURL != "postgres://app:pw@db/orders" {
		t.Errorf("DATABASE_URL: database %q, %v", cfg.databaseURL, err)
	}
	if cfg, err := parseConfig([]string{"-database-url", "x.db"}, pg); err != nil || cfg.databaseURL != "x.db" {
		t.Errorf("-database-url over DATABASE_URL: database %q, %v; want x.db", cfg.databaseURL, err)
	}
	// Under Kubernetes the shutdown delay defaults to time for the load
	// balancer to notice; a flag still wins.
	k8s := func(k string) string {
		return map[string]string{"KUBERNETES_SERVICE_HOST": "10.0.0.1", "ORDER_ID_SECRET": "0123456789abcdef"}[k]
	}
	if cfg, err := parseConfig(nil, k8s); err != nil || cfg.shutdownDelay != orchestratedShutdownDelay || string(cfg.orderIDSecret) != "0123456789abcdef" {
		t.Errorf("parseConfig under Kubernetes = shutdown delay %v, secret %q, %v; want %v and the secret", cfg.shutdownDelay, cfg.orderIDSecret, err, orchestratedShutdownDelay)
	}
	if cfg, err := parseConfig([]string{"-shutdown-delay", "0s"}, k8s); err != nil || cfg.shutdownDelay != 0 {
		t.Errorf("-shutdown-delay 0s under Kubernetes = %v, %v; want 0", cfg.shutdownDelay, err)
	}
	short := func(k string) string { return map[string]string{"ORDER_ID_SECRET": "short-secret"}[k] }
	if _, err := parseConfig(nil, short); err == nil || strings.Contains(err.Error(), "short-secret") {
		t.Errorf("parseConfig with a 12-byte ORDER_ID_SECRET = %v; want an error that does not show it", err)
	}
	for _, args := range [][]string{
		{"-concurrency", "0"},
		{"-drain-timeout", "0s"},
		{"-process-time", "-1s"},
		{"-queue", " "},
		{"-amqp-queue-type", "stream"},
		{"-log-level", "loud"},
		{"-max-queued", "0"},
		{"-max-conns", "0"},
		{"-idle-timeout", "0s"},
		{"-initial-stock", "-1"},
		{"-sql-visibility", "0s"},
		{"-kill-switch-restart", "0s"},
		{"-broker", "nats"},
		{"-broker", "memory", "-amqp-url", "amqp://x"},
		{"-database-url", ""},
		{"-kafka-partitions", "0"},
		{"-kafka-brokers", "k:9092", "-kafka-client", "sarama"},
		{"-amqp-url", "amqp://x", "-kafka-brokers", "k:9092"},
		{"extra"},
	} {
		if _, err := parseConfig(args, func(string) string { return "" }); err == nil {
			t.Errorf("parseConfig(%q) = nil error; want one", args)
		}
	}
}

// The AMQP URL's password never reaches the output, not even the usage text
// the flag package prints on -h or on a bad flag.
func TestUsageNeverShowsThePassword(t *testing.T) {
	getenv := func(k string) string {
		if k == "AMQP_URL" {
			return "amqp://app:s3cret@rabbit:5672/"
		}
		return ""
	}
	for _, args := range [][]string{{"-h"}, {"-nope"}, {"-concurrency", "x"}} {
		out := captureStderr(t, func() { _, _ = parseConfig(args, getenv) })
		if strings.Contains(out, "s3cret") || strings.Contains(out, "rabbit:5672") {
			t.Errorf("parseConfig(%q) printed the AMQP URL:\n%s", args, out)
		}
		if !strings.Contains(out, "-amqp-url") {
			t.Errorf("parseConfig(%q) printed no usage:\n%s", args, out)
		}
	}
}

// captureStderr returns what f wrote to os.Stderr.
func captureStderr(t *testing.T, f func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stderr
	os.Stderr = w
	done := make(chan string)
	go func() {
		b, _ := io.ReadAll(r)
		done <- string(b)
	}()
	f()
	os.Stderr = old
	w.Close()
	return <-done
}

// During -shutdown-delay /readyz answers 503 while orders are still
// accepted; then intake closes.
func TestShutdownDelayKeepsAcceptingOrdersWhileNotReady(t *testing.T) {
	base, s, stop := startInProcess(t, testConfig(t, "-shutdown-delay", "1s", "-process-time", "1ms"))
	waitReady(t, base, http.StatusOK)
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	waitReady(t, base, http.StatusServiceUnavailable)
	if s.intakeClosed.Load() {
		t.Skip("the machine was too slow to see the delay (intake already closed)")
	}
	// Accepted, and asked to close the connection: clients leave their
	// keep-alive connections before the server closes them.
	resp, err := http.Post(base+"/orders", "application/json", strings.NewReader(`{"item": "book", "quantity": 1}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted || !resp.Close {
		t.Errorf("POST /orders during -shutdown-delay = %d, Connection: close %v; want 202 with Connection: close", resp.StatusCode, resp.Close)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("run = %v", err)
	}
	if a, p, _ := s.counts(); a != 1 || p != 1 {
		t.Errorf("accepted %d, processed %d; want the order accepted during the delay processed", a, p)
	}
}

// Admin endpoints: with ADMIN_TOKEN, only bearers of the token; without,
// loopback only (these requests come from 127.0.0.1, so they pass).
func TestAdminEndpointsNeedTheTokenWhenOneIsSet(t *testing.T) {
	cfg := testConfig(t)
	cfg.adminToken = "s3cret-token"
	base, _, _ := startInProcess(t, cfg)
	if code, _ := do(t, "GET", base+"/admin/api/runners", ""); code != http.StatusUnauthorized && code != http.StatusForbidden {
		t.Errorf("GET /admin/api/runners without the token = %d; want 401 or 403", code)
	}
	req, _ := http.NewRequest("GET", base+"/admin/api/runners", nil)
	req.Header.Set("Authorization", "Bearer s3cret-token")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /admin/api/runners with the token = %d; want 200", resp.StatusCode)
	}
	req.Header.Set("Authorization", "Bearer wrong")
	if resp, err = http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusForbidden {
		t.Errorf("GET /admin/api/runners with a wrong token = %d; want 401 or 403", resp.StatusCode)
	}
	// Review 6c: the scheme is case-insensitive (RFC 9110), and a browser,
	// which cannot send a bearer token, uses Basic authentication with the
	// token as the password, after a 401 that asks for it.
	for _, tc := range []struct {
		auth string
		want int
	}{
		{"bearer s3cret-token", http.StatusOK},
		{"BEARER s3cret-token", http.StatusOK},
		{"Basic " + base64.StdEncoding.EncodeToString([]byte("operator:s3cret-token")), http.StatusOK},
		{"Basic " + base64.StdEncoding.EncodeToString([]byte("s3cret-token:wrong")), http.StatusUnauthorized},
		{"", http.StatusUnauthorized},
	} {
		req, _ := http.NewRequest("GET", base+"/admin/", nil)
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("GET /admin/ with Authorization %q = %d; want %d", tc.auth, resp.StatusCode, tc.want)
		}
		if tc.want == http.StatusUnauthorized && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic ") {
			t.Errorf("GET /admin/ with Authorization %q: WWW-Authenticate %q; want a Basic challenge", tc.auth, resp.Header.Get("WWW-Authenticate"))
		}
	}
}

// A client that retries with the same Idempotency-Key gets the same order,
// which is processed once.
func TestIdempotencyKeyNamesTheSameOrder(t *testing.T) {
	base, s, _ := startInProcess(t, testConfig(t, "-process-time", "1ms"))
	waitReady(t, base, http.StatusOK)
	post := func(key string) (int, string) {
		req, _ := http.NewRequest("POST", base+"/orders", strings.NewReader(`{"item": "book", "quantity": 1}`))
		req.Header.Set("Idempotency-Key", key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out struct{ ID string }
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out.ID
	}
	c1, id1 := post("client-42-attempt")
	c2, id2 := post("client-42-attempt")
	c3, id3 := post("another")
	if c1 != 202 || c2 != 202 || c3 != 202 || id1 != id2 || id1 == id3 {
		t.Fatalf("posts = %d %s, %d %s, %d %s; want 202 three times, the first two the same order", c1, id1, c2, id2, c3, id3)
	}
	waitStatus(t, base, id1, statusProcessed)
	waitStatus(t, base, id3, statusProcessed)
	if a, p, _ := s.counts(); a != 2 || p != 2 {
		t.Errorf("accepted %d, processed %d; want 2 and 2", a, p)
	}
	if code, _ := post(strings.Repeat("k", maxIdempotencyKey+1)); code != http.StatusBadRequest {
		t.Errorf("an over-long Idempotency-Key = %d; want 400", code)
	}
}

// The in-memory queue (-broker memory) is bounded: while the consumer is
// paused, orders beyond -max-queued are refused with 503, and none is lost
// (left counts those in the memory queue, lost at exit, and those still in
// the outbox, kept).
func TestInMemoryQueueIsBounded(t *testing.T) {
	base, s, stop := startInProcess(t, testConfig(t, "-broker", "memory", "-max-queued", "3", "-process-time", "1ms"))
	waitReady(t, base, http.StatusOK)
	if code, body := newAdminClient(t, base, "").pause("orders"); code != http.StatusOK {
		t.Fatalf("pause = %d %s", code, body)
	}
	codes := map[int]int{}
	for range 5 {
		code, _ := do(t, "POST", base+"/orders", `{"item": "book", "quantity": 1}`)
		codes[code]++
	}
	if codes[http.StatusAccepted] != 3 || codes[http.StatusServiceUnavailable] != 2 {
		t.Errorf("5 posts with -max-queued 3 while paused: %v; want 3 × 202 and 2 × 503", codes)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	left := s.leftAtStop
	if a, p, _ := s.counts(); a != 3 || p+left != 3 {
		t.Errorf("accepted %d, processed %d, left %d; want processed + left = 3", a, p, left)
	}
}

// At the drain deadline, handlers still running are abandoned: their orders
// are not processed, stay in the queue, and the report still adds up.
func TestDrainDeadlineAbandonsAndAccountsForEveryOrder(t *testing.T) {
	base, s, stop := startInProcess(t, testConfig(t, "-process-time", "10s", "-drain-timeout", "100ms", "-concurrency", "2"))
	waitReady(t, base, http.StatusOK)
	for range 5 {
		if code, _ := do(t, "POST", base+"/orders", `{"item": "book", "quantity": 1}`); code != http.StatusAccepted {
			t.Fatalf("POST /orders = %d", code)
		}
	}
	waitMetrics(t, base, `queuekit_handlers_in_flight{consumer="orders"} 2`)
	if err := stop(); err != nil {
		t.Fatalf("run = %v; want nil: a drain timeout is no failure of the service", err)
	}
	a, p, f := s.counts()
	left := s.leftAtStop
	var abandoned int
	for _, d := range s.drains {
		abandoned += d.Abandoned
	}
	if a != 5 || p != 0 || f != 0 || left != 5 || abandoned != 2 {
		t.Errorf("accepted %d, processed %d, failed %d, left %d, abandoned %d; want 5, 0, 0, 5, 2", a, p, f, left, abandoned)
	}
}

// testDatabase returns the URL of a fresh SQLite database in t.TempDir.
func testDatabase(t *testing.T) string {
	t.Helper()
	return filepath.Join(t.TempDir(), "orders.db")
}
