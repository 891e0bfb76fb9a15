package main

// Issue 14 item 4: when the orders' database goes away, the orders consumer's
// kill switch trips instead of spending the orders' delivery budgets. The
// outage is real: the test's PostgreSQL database stops accepting connections
// (ALTER DATABASE … ALLOW_CONNECTIONS false) and every connection to it is
// terminated, while the broker — memory, and RabbitMQ where one answers —
// stays up. What an operator sees is checked where the operator looks:
// /readyz, /metrics, the admin page and its JSON; and after the database is
// back, that every order was processed exactly once and none dead-lettered.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/queuekit/queuekit/sql/sqldb"
)

func TestDatabaseOutageTripsTheKillSwitchAndDeadLettersNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("an outage of a few seconds: skipped with -short")
	}
	t.Parallel()
	t.Run("memory", func(t *testing.T) {
		t.Parallel()
		outageScenario(t, "-broker", "memory")
	})
	t.Run("rabbitmq", func(t *testing.T) {
		t.Parallel()
		amqpURL := amqpURLForTest(t)
		queue := fmt.Sprintf("queuekit-gin-outage-%d-%d", os.Getpid(), time.Now().UnixNano())
		t.Cleanup(func() { deleteQueues(t, amqpURL, queue) })
		outageScenario(t, "-amqp-url", amqpURL, "-queue", queue)
	})
}

// outageScenario runs the service on a PostgreSQL database of the test's own
// with the broker args name, posts orders until a backlog builds, cuts the
// database, checks what the operator sees, restores it, and checks that
// every order was processed once and none dead-lettered.
func outageScenario(t *testing.T, brokerArgs ...string) {
	dsn := postgresURL(t)
	// -process-time 200ms: 8 workers take about 40 orders a second, fewer
	// than the clients post, so that orders wait at the broker when the
	// database goes away. -kill-switch-restart 1s: it probes a second
	// after each trip (30 s by default).
	cfg := testConfig(t, append([]string{"-database-url", dsn, "-process-time", "200ms", "-kill-switch-restart", "1s"}, brokerArgs...)...)
	name := cfg.queue
	base, s, logs := startLogged(t, cfg)
	waitReady(t, base, http.StatusOK)
	db := openTestDB(t, dsn)
	processed := func() int { return count(t, db, `SELECT COUNT(*) FROM orders WHERE status = 'processed'`) }

	// Orders: more than are processed before the database goes away
	// (once 10 were, so that the switch sees successes before failures),
	// so that a backlog waits at the broker and in the outbox.
	const n = 80
	var posting sync.WaitGroup
	for c := range 8 {
		posting.Go(func() {
			for i := range n / 8 {
				code, body := postKeyed(t, base, fmt.Sprintf("outage-%d-%d", c, i), `{"item": "book", "quantity": 1}`)
				if code != http.StatusAccepted {
					t.Errorf("POST /orders before the outage = %d %v; want 202", code, body)
				}
			}
		})
	}
	posting.Wait()
	deadline := time.Now().Add(20 * time.Second)
	for processed() < 10 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d orders processed after 20 s", processed(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	before := processed()
	if n-before < 20 {
		t.Fatalf("%d of %d orders processed before the outage; want a backlog of 20 at least", before, n)
	}

	// The outage.
	restore := cutDatabase(t, dsn)
	cut := time.Now()

	// /readyz: 503, the consumer tripped, with the reason.
	var ready map[string]any
	var reason string
	for {
		var code int
		code, ready = do(t, "GET", base+"/readyz", "")
		if c := consumerIn(ready, name); code == http.StatusServiceUnavailable && c["state"] == "tripped" {
			reason, _ = c["reason"].(string)
			break
		}
		if time.Since(cut) > 20*time.Second {
			t.Fatalf("GET /readyz %v after the database went away = %d %v; want 503 with %s tripped", time.Since(cut), code, ready, name)
		}
		time.Sleep(10 * time.Millisecond)
	}
	tripped := time.Since(cut)
	if !strings.Contains(reason, "failure ratio") || !strings.Contains(reason, "accepting connections") && !strings.Contains(reason, "terminating connection") {
		t.Errorf("reason on /readyz = %q; want the failure ratio and the database's error", reason)
	}
	if code, _ := do(t, "GET", base+"/healthz", ""); code != http.StatusOK {
		t.Errorf("GET /healthz while tripped = %d; want 200 (alive: restarting would not bring the database back)", code)
	}
	// /metrics: the trip is counted, and the state gauge shows the switch
	// open (2) or, between two trips, probing (1).
	waitMetrics(t, base, fmt.Sprintf(`queuekit_events_total{consumer=%q,event="tripped"}`, name))
	eventually(t, "queuekit_kill_switch_state: "+name+" tripped or probing", func() (bool, any) {
		v := metricValue(scrape(t, base), fmt.Sprintf(`queuekit_kill_switch_state{consumer=%q}`, name))
		return v == 2 || v == 1, v
	})
	// The admin page's JSON and the page itself. Polled: with a restart
	// timeout of 1 s the switch probes now and then, and a probing
	// consumer is running until its probe fails.
	eventually(t, "GET /admin/api/runners: "+name+" tripped, with the reason", func() (bool, any) {
		code, list := do(t, "GET", base+"/admin/api/runners", "")
		r := adminRunner(list, name)
		why, _ := r["reason"].(string)
		return code == http.StatusOK && r["state"] == "tripped" && strings.Contains(why, "kill switch tripped"), list
	})
	eventually(t, "GET /admin/: the page says tripped, and why", func() (bool, any) {
		code, page := get(t, base+"/admin/")
		return code == http.StatusOK && strings.Contains(page, `class="state tripped"`) && strings.Contains(page, "kill switch tripped"), code
	})
	// POST /orders answers 503 meanwhile (the database holds the orders).
	if code, body := do(t, "POST", base+"/orders", `{"item": "book", "quantity": 1}`); code != http.StatusServiceUnavailable {
		t.Errorf("POST /orders during the outage = %d %v; want 503", code, body)
	}
	// The outage lasts long enough for a probe to fail and trip it again.
	for s.orders.KillSwitch().Trips < 2 {
		if time.Since(cut) > 20*time.Second {
			t.Fatalf("kill switch %+v %v after the database went away; want a second trip (a probe that failed)", s.orders.KillSwitch(), time.Since(cut))
		}
		time.Sleep(10 * time.Millisecond)
	}
	outage := time.Since(cut)

	// The database is back: it probes, recovers, and processes the rest.
	restore()
	back := time.Now()
	deadline = time.Now().Add(30 * time.Second)
	for s.orders.KillSwitch().State != "closed" {
		if time.Now().After(deadline) {
			t.Fatalf("kill switch %+v 30 s after the database came back; want closed", s.orders.KillSwitch())
		}
		time.Sleep(10 * time.Millisecond)
	}
	recovered := time.Since(back)
	for processed() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d orders processed 30 s after the database came back", processed(), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	drained := time.Since(back)
	waitReady(t, base, http.StatusOK)

	// Nothing dead-lettered, everything processed exactly once.
	if failed := count(t, db, `SELECT COUNT(*) FROM orders WHERE status <> 'processed'`); failed != 0 {
		t.Errorf("%d orders not processed; want 0", failed)
	}
	if twice := count(t, db, `SELECT COUNT(*) FROM orders WHERE processed_count <> 1`); twice != 0 {
		t.Errorf("%d orders processed other than once; want 0", twice)
	}
	if sold := count(t, db, `SELECT $1 - quantity FROM stock WHERE item = 'book'`, defaultInitialStock); sold != n {
		t.Errorf("stock sold %d; want %d (one per order)", sold, n)
	}
	maxAttempt := count(t, db, `SELECT MAX(attempts) FROM orders`)
	metrics := scrape(t, base)
	deadLetters := metricValue(metrics, fmt.Sprintf(`queuekit_messages_handled_total{consumer=%q,outcome="dead-letter"}`, name))
	if deadLetters != 0 {
		t.Errorf("queuekit_messages_handled_total{outcome=dead-letter} = %v; want 0", deadLetters)
	}
	if code, list := do(t, "GET", base+"/admin/api/runners", ""); code != http.StatusOK || adminRunner(list, name)["dead_letters"] != float64(0) || adminRunner(list, name)["state"] != "running" {
		t.Errorf("GET /admin/api/runners after the outage = %d %v; want %s running with 0 dead letters", code, list, name)
	}
	if v := metricValue(metrics, fmt.Sprintf(`queuekit_kill_switch_state{consumer=%q}`, name)); v != 0 || !strings.Contains(metrics, "queuekit_kill_switch_state{") {
		t.Errorf("queuekit_kill_switch_state after the outage = %v; want the series, at 0 (closed)", v)
	}
	for _, ev := range []string{"tripped", "probing", "recovered"} {
		if v := metricValue(metrics, fmt.Sprintf(`queuekit_events_total{consumer=%q,event=%q}`, name, ev)); v < 1 {
			t.Errorf("queuekit_events_total{event=%q} = %v after the outage; want at least 1", ev, v)
		}
	}
	for _, msg := range []string{"kill switch tripped", "kill switch probing", "kill switch closed"} {
		if !strings.Contains(logs.String(), msg) {
			t.Errorf("the log does not say %q", msg)
		}
	}
	ks := s.orders.KillSwitch()
	st := s.orders.Stats()
	t.Logf("%d orders (%d processed before the outage); tripped %v after the database went away (reason %q); outage %v, %d trips; "+
		"after it came back: closed in %v, all processed in %v; given back %d, requeued %v, dead-lettered %v; highest attempt %d of %d",
		n, before, tripped.Round(time.Millisecond), reason, outage.Round(time.Millisecond), ks.Trips, recovered.Round(time.Millisecond), drained.Round(time.Millisecond),
		st.GivenBack, metricValue(metrics, fmt.Sprintf(`queuekit_messages_handled_total{consumer=%q,outcome="requeue"}`, name)),
		deadLetters, maxAttempt, maxDeliveries)
}

// Bad orders are the orders' fault, not the database's: however many fail
// (dead-lettered at once, as always), the kill switch does not count them
// and stays closed, and good orders go on being processed.
func TestBadOrdersDoNotTripTheKillSwitch(t *testing.T) {
	base, s, _ := startInProcess(t, testConfig(t, "-process-time", "1ms", "-unavailable-items", "gizmo"))
	waitReady(t, base, http.StatusOK)
	var ids []string
	for i := range 3 * killSwitchMinMessages {
		code, body := postKeyed(t, base, fmt.Sprintf("bad-%d", i), `{"item": "gizmo", "quantity": 1}`)
		if code != http.StatusAccepted {
			t.Fatalf("POST /orders = %d %v; want 202", code, body)
		}
		ids = append(ids, body["id"].(string))
	}
	for _, id := range ids {
		waitStatus(t, base, id, statusFailed)
	}
	_, body := postKeyed(t, base, "good", `{"item": "book", "quantity": 1}`)
	good, _ := body["id"].(string)
	waitStatus(t, base, good, statusProcessed)
	if ks := s.orders.KillSwitch(); ks.State != "closed" || ks.Trips != 0 {
		t.Errorf("kill switch after %d bad orders = %+v; want closed, never tripped", len(ids), ks)
	}
	if st := consumerState(t, s); st != "running" {
		t.Errorf("orders consumer %s after bad orders; want running", st)
	}
}

// eventually polls cond until it holds, for at most 10 s; then it fails
// the test with what and the last value cond returned.
func eventually(t *testing.T, what string, cond func() (bool, any)) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s: not within 10 s; last: %v", what, last)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// cutDatabase makes the database of dsn unavailable as an outage does: it
// accepts no new connection (ALTER DATABASE … ALLOW_CONNECTIONS false:
// "database … is not currently accepting connections") and every open one
// is terminated. restore lets connections in again; it runs at the end of
// the test too.
func cutDatabase(t *testing.T, dsn string) (restore func()) {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	name := strings.TrimPrefix(u.Path, "/")
	server := os.Getenv("QUEUEKIT_POSTGRES_URL")
	if server == "" {
		server = defaultPostgresURL
	}
	admin, _, err := sqldb.Open(server)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	exec := func(q string, args ...any) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := admin.ExecContext(ctx, q, args...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	exec(`ALTER DATABASE ` + name + ` WITH ALLOW_CONNECTIONS false`)
	exec(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`, name)
	var once sync.Once
	restore = func() { once.Do(func() { exec(`ALTER DATABASE ` + name + ` WITH ALLOW_CONNECTIONS true`) }) }
	t.Cleanup(restore)
	return restore
}

// consumerIn returns the entry of the runner name in a health report.
func consumerIn(report map[string]any, name string) map[string]any {
	cs, _ := report["consumers"].([]any)
	for _, c := range cs {
		if m, ok := c.(map[string]any); ok && m["name"] == name {
			return m
		}
	}
	return nil
}

// adminRunner returns the entry of the runner name in GET /admin/api/runners.
func adminRunner(list map[string]any, name string) map[string]any {
	rs, _ := list["runners"].([]any)
	for _, r := range rs {
		if m, ok := r.(map[string]any); ok && m["name"] == name {
			return m
		}
	}
	return nil
}

func get(t *testing.T, u string) (int, string) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func scrape(t *testing.T, base string) string {
	t.Helper()
	code, body := get(t, base+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics = %d", code)
	}
	return body
}

// metricValue returns the value of the series in a scrape, 0 when absent.
func metricValue(scrape, series string) float64 {
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(scrape)
	if m == nil {
		return 0
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}
