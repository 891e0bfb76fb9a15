package main

// Regression tests for the hostile review of issue 12 (R4: examples/gin on
// a database), and for the chaos run's finding on the order id secret.

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
)

// startLogged is startInProcess with the service's log kept in a buffer.
func startLogged(t *testing.T, cfg config) (base string, s *service, logs *lockedBuffer) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs = &lockedBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	built := make(chan *service, 1)
	go func() {
		done <- runWith(ctx, cfg, ln, slog.New(slog.NewTextHandler(logs, nil)), func(s *service) { built <- s })
	}()
	select {
	case s = <-built:
	case err := <-done:
		cancel()
		t.Fatalf("run = %v before the service was built", err)
	}
	t.Cleanup(func() {
		cancel()
		<-done
		http.DefaultClient.CloseIdleConnections()
	})
	return "http://" + ln.Addr().String(), s, logs
}

// issue 12 review R4 #1: on PostgreSQL, GET /orders/<id with invalid
// UTF-8 or NUL> answered 503 "database unavailable" and logged a WARN per
// request (SQLSTATE 22021): anyone could fake outage answers and flood the
// logs. An id that cannot be an order id is 404 without a query.
func TestMalformedOrderIDIsNotFoundWithoutTheDatabase(t *testing.T) {
	t.Parallel()
	for _, db := range []struct{ name, url string }{{"sqlite", ""}, {"postgres", "pg"}} {
		t.Run(db.name, func(t *testing.T) {
			t.Parallel()
			args := []string{"-process-time", "1ms"}
			if db.url == "pg" {
				args = append(args, "-database-url", postgresURL(t))
			}
			base, _, logs := startLogged(t, testConfig(t, args...))
			waitReady(t, base, http.StatusOK)
			for _, id := range []string{"%00", "%FF%FE", "ord_%C0%80", "ord_" + strings.Repeat("0", 23) + "%00", "ord_XYZ", strings.Repeat("a", 5000)} {
				code, body := do(t, "GET", base+"/orders/"+id, "")
				if code != http.StatusNotFound {
					t.Errorf("GET /orders/%s = %d %v; want 404", id, code, body)
				}
			}
			if strings.Contains(logs.String(), "level=WARN") {
				t.Errorf("GET of malformed order ids logged a warning; want none:\n%s", logs.String())
			}
		})
	}
}

// issue 12 review R4 #2: the SQLite file deleted while the service runs
// went unnoticed: 202s and /readyz ok, written to an unlinked file, every
// order gone at the next start. Readiness and intake notice it.
func TestDeletedSQLiteFileTurnsReadinessAndIntakeOff(t *testing.T) {
	t.Parallel()
	path := testDatabase(t)
	base, _, logs := startLogged(t, testConfig(t, "-database-url", path, "-process-time", "1ms"))
	waitReady(t, base, http.StatusOK)
	if code, body := do(t, "POST", base+"/orders", `{"item": "book", "quantity": 1}`); code != http.StatusAccepted {
		t.Fatalf("POST /orders = %d %v; want 202", code, body)
	}
	for _, suffix := range []string{"", "-wal", "-shm"} {
		if err := os.Remove(path + suffix); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	waitReady(t, base, http.StatusServiceUnavailable)
	code, body := do(t, "GET", base+"/readyz", "")
	if reason, _ := body["reason"].(string); code != http.StatusServiceUnavailable || !strings.Contains(reason, path) {
		t.Errorf("GET /readyz = %d %v; want 503 with a reason naming %s", code, body, path)
	}
	if code, body := do(t, "POST", base+"/orders", `{"item": "book", "quantity": 1}`); code != http.StatusServiceUnavailable {
		t.Errorf("POST /orders with the database file deleted = %d %v; want 503", code, body)
	}
	if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "database file") {
		t.Errorf("no ERROR log about the database file:\n%s", logs.String())
	}
}

// issue 12 review R4 #7: a dead-lettered order's error said "dead-lettered
// after attempt 1" instead of why.
func TestFailedOrderRecordsTheReason(t *testing.T) {
	t.Parallel()
	base, _, _ := startInProcess(t, testConfig(t, "-process-time", "1ms", "-unavailable-items", "gizmo"))
	waitReady(t, base, http.StatusOK)
	code, body := do(t, "POST", base+"/orders", `{"item": "gizmo", "quantity": 1}`)
	if code != http.StatusAccepted {
		t.Fatalf("POST /orders = %d %v", code, body)
	}
	got := waitStatus(t, base, body["id"].(string), statusFailed)
	if e, _ := got["error"].(string); !strings.Contains(e, `item "gizmo" is unavailable`) {
		t.Errorf("failed order's error = %q; want the reason (item \"gizmo\" is unavailable)", e)
	}
}

// The reason stored for a failed order is bounded, and stays valid UTF-8.
func TestFailureReasonIsBounded(t *testing.T) {
	long := strings.Repeat("é", 5000)
	got := boundReason(long)
	if len(got) > maxReasonLen || !strings.HasPrefix(long, strings.TrimSuffix(got, "…")) {
		t.Errorf("boundReason(5000 × é) = %d bytes; want at most %d, a prefix of it", len(got), maxReasonLen)
	}
	if got := boundReason("short"); got != "short" {
		t.Errorf("boundReason(short) = %q", got)
	}
}

// Chaos run (issue 12): without ORDER_ID_SECRET the secret was random per
// process, so a client retrying its Idempotency-Key after a restart made a
// second order. The default secret is kept in the database.
func TestIdempotencyKeyNamesTheSameOrderAfterARestartWithoutSecret(t *testing.T) {
	t.Parallel()
	path := testDatabase(t)
	post := func(base string) string {
		t.Helper()
		req, _ := http.NewRequest("POST", base+"/orders", strings.NewReader(`{"item": "book", "quantity": 3}`))
		req.Header.Set("Idempotency-Key", "restart-retry-1")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("POST /orders = %d %s; want 202", resp.StatusCode, b)
		}
		return resp.Header.Get("Location")
	}
	base, _, stop := startInProcess(t, testConfig(t, "-database-url", path, "-process-time", "1ms"))
	waitReady(t, base, http.StatusOK)
	first := post(base)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	base, s, logs := startLogged(t, testConfig(t, "-database-url", path, "-process-time", "1ms"))
	waitReady(t, base, http.StatusOK)
	if second := post(base); first != second {
		t.Errorf("the same Idempotency-Key after a restart without ORDER_ID_SECRET named %s, then %s; want one order", first, second)
	}
	if n := count(t, s.db.db, `SELECT COUNT(*) FROM orders`); n != 1 {
		t.Errorf("orders after the retry = %d; want 1", n)
	}
	var secret string
	if err := s.db.db.QueryRow(`SELECT value FROM settings WHERE name = 'order_id_secret'`).Scan(&secret); err != nil {
		t.Fatal(err)
	}
	if len(secret) < minOrderIDSecretLen || strings.Contains(logs.String(), secret) {
		t.Errorf("the stored secret is %d bytes or was logged", len(secret))
	}
}

// ORDER_ID_SECRET still wins over the secret kept in the database.
func TestOrderIDSecretOverridesTheStoredOne(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, "-process-time", "1ms")
	cfg.orderIDSecret = []byte("an-explicit-secret-of-32-bytes!!")
	base, _, _ := startInProcess(t, cfg)
	waitReady(t, base, http.StatusOK)
	want, _ := newOrderID(cfg.orderIDSecret, "k")
	req, _ := http.NewRequest("POST", base+"/orders", strings.NewReader(`{"item": "book", "quantity": 3}`))
	req.Header.Set("Idempotency-Key", "k")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Get("Location"); got != "/orders/"+want {
		t.Errorf("with ORDER_ID_SECRET the key named %s; want /orders/%s", got, want)
	}
}
