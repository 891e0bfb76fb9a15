package main

// Tests of the orders' database (issue 12 item 5): the order and its outbox
// row commit together; the service restarted on the same database after
// SIGTERM and after SIGKILL answers for its orders and processes every
// accepted one exactly once; PostgreSQL through -database-url; a database
// that is down at start, and one whose table has the wrong schema.

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/queuekit/queuekit/sql/sqldb"
	"github.com/queuekit/queuekit/sql/sqlqueue"
)

// skippedPostgres counts the tests skipped for want of PostgreSQL.
var skippedPostgres atomic.Int64

const defaultPostgresURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// postgresURL creates a database of the test's own (queuekit_test_<random>)
// on the server at QUEUEKIT_POSTGRES_URL (or the local default), drops it
// with FORCE when the test ends, and returns its URL. It skips the test
// when no server answers, or fails it when QUEUEKIT_REQUIRE_BROKERS=1.
func postgresURL(t *testing.T) string {
	t.Helper()
	server := os.Getenv("QUEUEKIT_POSTGRES_URL")
	if server == "" {
		server = defaultPostgresURL
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	admin, _, err := sqldb.Open(server)
	if err == nil {
		err = admin.PingContext(ctx)
	}
	if err != nil {
		if admin != nil {
			admin.Close()
		}
		msg := fmt.Sprintf("no PostgreSQL at %s (%s); set QUEUEKIT_POSTGRES_URL or start postgresql", sqldb.Redact(server), sqldb.RedactError(err, server))
		if os.Getenv("QUEUEKIT_REQUIRE_BROKERS") == "1" {
			t.Fatal(msg + " (QUEUEKIT_REQUIRE_BROKERS=1)")
		}
		skippedPostgres.Add(1)
		t.Skip(msg)
	}
	defer admin.Close()
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	name := "queuekit_test_" + hex.EncodeToString(b)
	if _, err := admin.ExecContext(ctx, `CREATE DATABASE `+name); err != nil {
		t.Fatalf("CREATE DATABASE %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		admin, _, err := sqldb.Open(server)
		if err != nil {
			t.Errorf("drop %s: %v", name, err)
			return
		}
		defer admin.Close()
		if _, err := admin.ExecContext(ctx, `DROP DATABASE IF EXISTS `+name+` WITH (FORCE)`); err != nil {
			t.Errorf("DROP DATABASE %s: %v", name, err)
		}
	})
	u, err := url.Parse(server)
	if err != nil {
		t.Fatal("QUEUEKIT_POSTGRES_URL: invalid URL")
	}
	u.Path = "/" + name
	return u.String()
}

// openTestDB opens the database at dsn for the test's checks.
func openTestDB(t *testing.T, dsn string) *sql.DB {
	t.Helper()
	db, _, err := sqldb.Open(dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func count(t *testing.T, db *sql.DB, query string, args ...any) int {
	t.Helper()
	var n int
	if err := db.QueryRow(query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

// POST /orders writes the order and its outbox row in one transaction: when
// the outbox write fails, no order is left behind (503, nothing stored);
// once it works again, the same request is accepted and processed.
func TestOrderAndOutboxRowCommitTogether(t *testing.T) {
	base, s, _ := startInProcess(t, testConfig(t, "-process-time", "1ms"))
	waitReady(t, base, http.StatusOK)
	db := s.db.db
	// The outbox write fails: its table is gone (renamed away).
	if _, err := db.Exec(`ALTER TABLE queuekit_outbox RENAME TO queuekit_outbox_away`); err != nil {
		t.Fatal(err)
	}
	code, body := postKeyed(t, base, "tx-key-1", `{"item": "book", "quantity": 2}`)
	if code != http.StatusServiceUnavailable {
		t.Errorf("POST /orders with the outbox failing = %d %v; want 503", code, body)
	}
	if n := count(t, db, `SELECT COUNT(*) FROM orders`); n != 0 {
		t.Errorf("%d orders stored although their outbox row was not; want 0 (one transaction)", n)
	}
	if _, err := db.Exec(`ALTER TABLE queuekit_outbox_away RENAME TO queuekit_outbox`); err != nil {
		t.Fatal(err)
	}
	code, body = postKeyed(t, base, "tx-key-1", `{"item": "book", "quantity": 2}`)
	if code != http.StatusAccepted {
		t.Fatalf("POST /orders once the outbox works = %d %v; want 202", code, body)
	}
	id, _ := body["id"].(string)
	got := waitStatus(t, base, id, statusProcessed)
	if got["processed_count"] != float64(1) {
		t.Errorf("GET /orders/%s = %v; want processed_count 1", id, got)
	}
	if n := count(t, db, `SELECT COUNT(*) FROM orders`); n != 1 {
		t.Errorf("%d orders stored; want 1", n)
	}
	if n := count(t, db, `SELECT COUNT(*) FROM queuekit_outbox`); n != 1 {
		t.Errorf("%d outbox rows; want 1 (the order's)", n)
	}
	if left := count(t, db, `SELECT quantity FROM stock WHERE item = 'book'`); left != defaultInitialStock-2 {
		t.Errorf("stock of book = %d; want %d", left, defaultInitialStock-2)
	}
}

// Concurrent requests with one Idempotency-Key make one order: the primary
// key is the key's claim, so all get 202 with one id and the table holds
// one row, processed once.
func TestConcurrentRetriesWithOneKeyMakeOneOrder(t *testing.T) {
	base, s, _ := startInProcess(t, testConfig(t, "-process-time", "1ms"))
	waitReady(t, base, http.StatusOK)
	var wg sync.WaitGroup
	ids := make([]string, 16)
	codes := make([]int, 16)
	for i := range ids {
		wg.Go(func() {
			code, body := postKeyed(t, base, "same-key", `{"item": "pen", "quantity": 3}`)
			codes[i] = code
			ids[i], _ = body["id"].(string)
		})
	}
	wg.Wait()
	for i := range ids {
		if codes[i] != http.StatusAccepted || ids[i] != ids[0] {
			t.Fatalf("request %d = %d %q; want 202 with the id %q of the others", i, codes[i], ids[i], ids[0])
		}
	}
	waitStatus(t, base, ids[0], statusProcessed)
	if n := count(t, s.db.db, `SELECT COUNT(*) FROM orders`); n != 1 {
		t.Errorf("%d orders for 16 requests with one key; want 1", n)
	}
	if a, _, _ := s.counts(); a != 1 {
		t.Errorf("accepted %d; want 1", a)
	}
}

// A database that is down at start: the service listens, /readyz answers
// 503 saying why (without the password), the log says it too, it retries
// with backoff, and a SIGTERM meanwhile stops it cleanly.
func TestDatabaseDownAtStartIsNotReadyAndRetries(t *testing.T) {
	// Port 1 of loopback: nothing listens there.
	cfg := testConfig(t, "-database-url", "postgres://app:s3cretpw@127.0.0.1:1/orders?sslmode=disable&connect_timeout=2")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var logs lockedBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runWith(ctx, cfg, ln, slog.New(slog.NewTextHandler(&logs, nil)), nil) }()
	base := "http://" + ln.Addr().String()
	deadline := time.Now().Add(20 * time.Second)
	var body map[string]any
	for {
		var code int
		if code, body = do(t, "GET", base+"/readyz", ""); code == http.StatusServiceUnavailable && strings.Contains(fmt.Sprint(body["reason"]), "database unreachable") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET /readyz = %d %v; want 503 saying the database is unreachable", code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, _ := do(t, "GET", base+"/healthz", ""); code != http.StatusOK {
		t.Errorf("GET /healthz while waiting for the database = %d; want 200 (alive)", code)
	}
	if code, _ := do(t, "POST", base+"/orders", `{"item": "book", "quantity": 1}`); code != http.StatusServiceUnavailable {
		t.Errorf("POST /orders while waiting for the database = %d; want 503", code)
	}
	// Two attempts at least: it retries.
	for strings.Count(logs.String(), "database unreachable") < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("run = %v after SIGTERM while waiting for the database; want nil", err)
	}
	out := logs.String()
	if n := strings.Count(out, "database unreachable"); n < 2 || !strings.Contains(out, "127.0.0.1:1") {
		t.Errorf("log has %d 'database unreachable' lines naming the server; want at least 2:\n%s", n, out)
	}
	if strings.Contains(out, "s3cretpw") || strings.Contains(fmt.Sprint(body), "s3cretpw") {
		t.Errorf("the database password appears in the log or on /readyz:\n%s\n%v", out, body)
	}
	t.Logf("/readyz: %v", body["reason"])
}

// A table "orders" that is not the service's (another program's, in a
// shared database) is a clear error at start, naming the column.
func TestOrdersTableWithTheWrongSchemaIsAClearError(t *testing.T) {
	cfg := testConfig(t)
	db := openTestDB(t, cfg.databaseURL)
	if _, err := db.Exec(`CREATE TABLE orders (id TEXT PRIMARY KEY, item TEXT)`); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = runWith(ctx, cfg, ln, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err == nil || !strings.Contains(err.Error(), `column "digest" is missing`) {
		t.Errorf("run with a foreign orders table = %v; want an error naming the missing column digest", err)
	}
}

// lockedBuffer is a bytes.Buffer safe for concurrent use (a logger's output).
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// The default service (SQLite file, SQL queue) keeps its orders and its
// queue across restarts. Run 1 takes orders and gets SIGTERM while orders
// are queued; run 2 takes more and is killed with SIGKILL while orders are
// being posted, relayed and processed; run 3 processes the rest. After it:
// every order answered 202 is in the database once and was processed
// exactly once (processed_count 1, stock decremented once), no outbox row
// is left unsent, and the queue is empty; GET answers for an order of
// run 1.
func TestEndToEndSQLiteSIGTERMAndSIGKILLProcessEveryOrderOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the service: skipped with -short")
	}
	// In parallel with the PostgreSQL one: processes of their own, on
	// databases of their own, mostly waiting.
	t.Parallel()
	restartKillScenario(t, "sqlite:"+testDatabase(t), 1200, 800)
}

// The same on PostgreSQL through -database-url, in a database of the
// test's own.
func TestEndToEndPostgresSIGTERMAndSIGKILLProcessEveryOrderOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the service: skipped with -short")
	}
	t.Parallel()
	restartKillScenario(t, postgresURL(t), 800, 800)
}

// restartKillScenario runs the service on the database dsn three times
// (see TestEndToEndSQLiteSIGTERMAndSIGKILLProcessEveryOrderOnce) with n1
// orders posted in run 1 and n2 in run 2, and checks the database after.
func restartKillScenario(t *testing.T, dsn string, n1, n2 int) {
	t.Helper()
	if raceEnabled { // the service is built with -race too: several times slower
		n1, n2 = n1/2, n2/2
	}
	// A short lease, so that run 3 gets the deliveries run 2 held when it
	// was killed after 5 s, not 30.
	common := []string{"-database-url", dsn, "-drain-timeout", e2eDrain.String(), "-concurrency", "32", "-sql-visibility", "5s"}
	start := time.Now()
	since := func() time.Duration { return time.Since(start).Round(100 * time.Millisecond) }

	// Run 1: SIGTERM with orders queued.
	// Slow processing, so that orders queue up while half are posted.
	p1 := startService(t, append(common, "-process-time", "250ms")...)
	r1 := p1.postAndSIGTERM(n1, n1/8)
	left1 := p1.reportInt(t, "left")
	t.Logf("%v run 1 (SIGTERM): %d accepted, %d processed, %d left queued; %s", since(), len(r1.accepted), len(p1.processedIDs()), left1, p1.reportRaw)
	if left1 == 0 {
		t.Errorf("run 1 left no order queued: SIGTERM did not meet queued orders")
	}

	// Run 2: SIGKILL while clients post, the relay relays and the
	// consumer processes.
	p2 := startService(t, append(common, "-process-time", "250ms")...)
	p2.waitReady(&http.Client{Timeout: 2 * time.Second})
	t.Logf("%v run 2 ready", since())
	stop := make(chan struct{})
	var answered atomic.Int64
	res := make(chan posted, 1)
	go func() {
		a, r, f := postOrders(t, p2.base, n2, stop, &answered, int64(n2)+1, nil)
		res <- posted{a, r, f}
	}()
	deadline := time.Now().Add(60 * time.Second)
	for (answered.Load() < int64(n2/2) || p2.processedCount() < 40) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if err := p2.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p2.exited
	close(stop)
	r2 := <-res
	t.Logf("%v run 2 (SIGKILL): %d accepted, %d posts unanswered (in flight at the kill or after it), %d processed (logged) before it", since(), len(r2.accepted), r2.failed, len(p2.processedIDs()))

	// Run 3 processes the rest.
	p3 := startService(t, append(common, "-process-time", "1ms")...)
	p3.waitReady(&http.Client{Timeout: 2 * time.Second})
	t.Logf("%v run 3 ready", since())
	if len(r1.accepted) > 0 {
		if code, body := do(t, "GET", p3.base+"/orders/"+r1.accepted[0], ""); code != http.StatusOK {
			t.Errorf("GET /orders/%s (run 1's) in run 3 = %d %v; want 200", r1.accepted[0], code, body)
		}
	}
	db := openTestDB(t, dsn)
	accepted := append(append([]string(nil), r1.accepted...), r2.accepted...)
	deadline = time.Now().Add(120 * time.Second)
	for time.Now().Before(deadline) {
		if count(t, db, `SELECT COUNT(*) FROM orders WHERE status <> 'processed'`) == 0 &&
			count(t, db, `SELECT COUNT(*) FROM `+sqlqueue.DefaultTable) == 0 &&
			count(t, db, `SELECT COUNT(*) FROM queuekit_outbox WHERE sent_at IS NULL`) == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("%v run 3 done", since())
	if err := p3.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-p3.exited
	if p3.exitErr != nil {
		t.Errorf("run 3 exit: %v; want 0\n%s", p3.exitErr, p3.tail())
	}

	// Every accepted order: in the database once, processed once.
	rows, err := db.Query(`SELECT id, status, processed_count FROM orders`)
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		status string
		count  int
	}
	stored := map[string]row{}
	for rows.Next() {
		var id string
		var r row
		if err := rows.Scan(&id, &r.status, &r.count); err != nil {
			t.Fatal(err)
		}
		stored[id] = r
	}
	rows.Close()
	var missing, notOnce []string
	for _, id := range accepted {
		r, ok := stored[id]
		switch {
		case !ok:
			missing = append(missing, id)
		case r.status != statusProcessed || r.count != 1:
			notOnce = append(notOnce, fmt.Sprintf("%s: %s, processed %d times", id, r.status, r.count))
		}
	}
	twice := count(t, db, `SELECT COUNT(*) FROM orders WHERE processed_count > 1`)
	unsent := count(t, db, `SELECT COUNT(*) FROM queuekit_outbox WHERE sent_at IS NULL`)
	queued := count(t, db, `SELECT COUNT(*) FROM `+sqlqueue.DefaultTable)
	// The effect on the stock: decremented once per processed order.
	var soldWant, soldGot int64
	if err := db.QueryRow(`SELECT COALESCE(SUM(quantity), 0) FROM orders WHERE status = 'processed'`).Scan(&soldWant); err != nil {
		t.Fatal(err)
	}
	var items int64
	if err := db.QueryRow(`SELECT COUNT(*), COALESCE(SUM($1 - quantity), 0) FROM stock`, int64(defaultInitialStock)).Scan(&items, &soldGot); err != nil {
		t.Fatal(err)
	}
	t.Logf("after 3 runs: %d orders answered 202 (run 1 %d, run 2 %d), %d rows in orders (%d committed but unanswered at the kill), processed exactly once: %d, more than once: %d; outbox unsent %d; queue rows %d; stock sold %d (want %d); processed per run (logged) %d / %d / %d",
		len(accepted), len(r1.accepted), len(r2.accepted), len(stored), len(stored)-len(accepted), len(accepted)-len(missing)-len(notOnce), twice, unsent, queued, soldGot, soldWant,
		len(p1.processedIDs()), len(p2.processedIDs()), len(p3.processedIDs()))
	if len(missing) > 0 || len(notOnce) > 0 || twice > 0 || unsent > 0 || queued > 0 || soldGot != soldWant {
		t.Errorf("missing %d (e.g. %v), not processed exactly once %d (e.g. %v), processed twice %d, unsent %d, queued %d, stock sold %d want %d",
			len(missing), missing[:min(3, len(missing))], len(notOnce), notOnce[:min(3, len(notOnce))], twice, unsent, queued, soldGot, soldWant)
	}
	if len(p3.processedIDs()) == 0 {
		t.Errorf("run 3 processed nothing: the kill left nothing to do")
	}
}
