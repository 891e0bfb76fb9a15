package main

// The chaos test: issue 12's must-show "effect-exactly-once under crashes,
// end to end". The service, built once and run as a process, takes 5,000
// orders from 16 concurrent clients and is killed with SIGKILL three times —
// once during intake, once while the outbox relay has rows pending, once
// while the consumer works through a non-empty queue — and restarted each
// time on the same database and broker. Then the database and the broker
// are checked from the outside: every order answered 202 is in the orders
// table once, its effect (status, processed_count, stock) committed once,
// no outbox row left unsent, the queue empty.
//
// Scenarios: PostgreSQL + RabbitMQ (a database and a vhost of the test's
// own); SQLite + the SQL queue (the default); SQLite + -broker memory, where
// the memory queue dies with the process and its orders are lost — counted
// and reported, not hidden; only what must hold there is asserted.
//
// Gated: the test runs only when QUEUEKIT_CHAOS=1 (each scenario takes about
// a minute and kills processes on purpose: not CI material). Run it with
//
//	cd examples && QUEUEKIT_CHAOS=1 go test -run TestChaos -count=1 -v -timeout 20m ./gin/

import (
	"bufio"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/queuekit/queuekit/sql/outbox"
	"github.com/queuekit/queuekit/sql/sqldb"
	"github.com/queuekit/queuekit/sql/sqlqueue"
)

const (
	chaosOrders  = 5000
	chaosClients = 16
	chaosItems   = 10
	// chaosSecret is the ORDER_ID_SECRET of every run: a client that
	// retries a key after a restart must name the same order.
	chaosSecret = "chaos-order-id-secret-0123456789"
	// chaosProcessTime makes consumption (8 workers) slower than intake,
	// so that the queue still holds orders when intake has finished.
	chaosProcessTime = "40ms"
	// chaosDeadline bounds every wait of a scenario.
	chaosDeadline = 4 * time.Minute
)

func chaosGate(t *testing.T) {
	t.Helper()
	if os.Getenv("QUEUEKIT_CHAOS") != "1" {
		t.Skip("chaos test: runs only with QUEUEKIT_CHAOS=1 (minutes of SIGKILLs; not run in CI)")
	}
}

// TestChaosPostgresRabbitMQ: PostgreSQL + RabbitMQ, strict: every accepted
// order processed exactly once.
func TestChaosPostgresRabbitMQ(t *testing.T) {
	chaosGate(t)
	dsn := postgresURL(t)
	vhost, amqpURL := chaosVhost(t)
	chaosScenario(t, chaosSetup{
		dsn:    dsn,
		env:    []string{"AMQP_URL=" + amqpURL},
		strict: true,
		depth: func(t *testing.T) (int, string) {
			return chaosRabbitDepth(t, vhost)
		},
	})
}

// TestChaosSQLiteSQLQueue: SQLite + the default SQL queue, strict.
func TestChaosSQLiteSQLQueue(t *testing.T) {
	chaosGate(t)
	dsn := "sqlite:" + filepath.Join(t.TempDir(), "orders.db")
	chaosScenario(t, chaosSetup{
		dsn:    dsn,
		strict: true,
		depth: func(t *testing.T) (int, string) {
			db := chaosOpen(t, dsn)
			defer db.Close()
			n := chaosCount(t, db, `SELECT COUNT(*) FROM `+sqlqueue.DefaultTable)
			return n, fmt.Sprintf("%s rows %d", sqlqueue.DefaultTable, n)
		},
	})
}

// TestChaosSQLiteMemory: SQLite + -broker memory. The memory queue ends with
// the process: the orders the relay had handed to it (and marked sent) and
// the consumer had not processed are lost at each SIGKILL. Asserted: no
// order processed twice, every accepted order in the database, no outbox
// row unsent, the stock matching the processed orders; reported: the loss.
func TestChaosSQLiteMemory(t *testing.T) {
	chaosGate(t)
	dsn := "sqlite:" + filepath.Join(t.TempDir(), "orders.db")
	chaosScenario(t, chaosSetup{
		dsn:  dsn,
		args: []string{"-broker", "memory"},
	})
}

// chaosSetup is what differs between the scenarios.
type chaosSetup struct {
	dsn  string
	args []string // more flags for the service
	env  []string // more environment for the service
	// strict: every accepted order must be processed exactly once; false
	// (the memory broker): loss is expected and reported.
	strict bool
	// depth reports the queue's depth while no service runs (exact);
	// nil: the broker lives in the process (memory).
	depth func(t *testing.T) (int, string)
}

// chaosCounts are counted from the logs of every run.
type chaosCounts struct {
	handledOK   atomic.Int64 // deliveries whose handler chain returned nil
	handledFail atomic.Int64 // deliveries that failed (retried, dead-lettered)
	processed   atomic.Int64 // "order processed": an effect committed by the inbox
}

// chaosProc is one run of the service.
type chaosProc struct {
	cmd     *exec.Cmd
	exited  chan struct{}
	exitErr error
	mu      sync.Mutex
	tail    []string
}

func (p *chaosProc) logTail() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.tail, "\n")
}

// chaosStart starts the service on addr and returns once it listens.
func chaosStart(t *testing.T, addr string, s chaosSetup, counts *chaosCounts) *chaosProc {
	t.Helper()
	args := append([]string{"-addr", addr, "-database-url", s.dsn, "-log-level", "debug",
		"-process-time", chaosProcessTime, "-drain-timeout", "5s"}, s.args...)
	cmd := exec.Command(serviceBinary(t), args...)
	cmd.Env = append(os.Environ(), "AMQP_URL=", "KAFKA_BROKERS=", "KUBERNETES_SERVICE_HOST=", "DATABASE_URL=", "ORDER_ID_SECRET="+chaosSecret)
	cmd.Env = append(cmd.Env, s.env...) // later entries win
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &chaosProc{cmd: cmd, exited: make(chan struct{})}
	listening := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		once := false
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.Contains(line, `msg="queuekit: message handled"`):
				if strings.Contains(line, " outcome=ok ") {
					counts.handledOK.Add(1)
				} else {
					counts.handledFail.Add(1)
				}
				continue
			case strings.Contains(line, `msg="order processed"`):
				counts.processed.Add(1)
				continue
			case strings.Contains(line, "level=DEBUG"):
				continue
			case !once && strings.Contains(line, "msg=listening"):
				once = true
				close(listening)
			}
			p.mu.Lock()
			p.tail = append(p.tail, line)
			if len(p.tail) > 40 {
				p.tail = p.tail[1:]
			}
			p.mu.Unlock()
		}
		_, _ = io.Copy(io.Discard, stderr)
		p.exitErr = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = cmd.Process.Kill()
			<-p.exited
		}
	})
	select {
	case <-listening:
	case <-p.exited:
		t.Fatalf("service exited before listening: %v\n%s", p.exitErr, p.logTail())
	case <-time.After(60 * time.Second):
		t.Fatalf("service did not listen within 60s\n%s", p.logTail())
	}
	return p
}

// kill sends SIGKILL and waits for the process to end.
func (p *chaosProc) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.exited
}

// chaosLoad is the 16 clients and what they saw.
type chaosLoad struct {
	base  string
	run   string // part of every Idempotency-Key
	next  atomic.Int64
	ids   []string // order i's id once answered 202
	qty   []int
	acc   atomic.Int64 // orders answered 202
	conn  atomic.Int64 // requests with no answer (refused, reset, timed out): retried
	s503  atomic.Int64 // answered 503 (starting, database busy): retried
	s409  atomic.Int64 // answered 409 (same key in progress): retried
	mu    sync.Mutex
	errs  []string
	retry atomic.Int64 // orders that needed more than one request
}

func (l *chaosLoad) fail(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.errs) < 20 {
		l.errs = append(l.errs, fmt.Sprintf(format, args...))
	}
}

// post posts all orders, each until it is answered 202 (or something that
// retrying cannot fix), from chaosClients clients.
func (l *chaosLoad) post(deadline time.Time) {
	var wg sync.WaitGroup
	for range chaosClients {
		wg.Go(func() {
			tr := &http.Transport{MaxIdleConnsPerHost: 1}
			defer tr.CloseIdleConnections()
			cl := &http.Client{Timeout: 10 * time.Second, Transport: tr}
			for {
				i := int(l.next.Add(1))
				if i > chaosOrders {
					return
				}
				l.postOne(cl, i, deadline)
			}
		})
	}
	wg.Wait()
}

func (l *chaosLoad) postOne(cl *http.Client, i int, deadline time.Time) {
	key := fmt.Sprintf("chaos-%s-%05d", l.run, i)
	body := fmt.Sprintf(`{"item": "chaos-item-%d", "quantity": %d}`, i%chaosItems, l.qty[i])
	want, err := newOrderID([]byte(chaosSecret), key)
	if err != nil {
		l.fail("order %d: %v", i, err)
		return
	}
	for attempt := 0; ; attempt++ {
		if attempt == 1 {
			l.retry.Add(1)
		}
		if time.Now().After(deadline) {
			l.fail("order %d (%s): not accepted before the deadline", i, key)
			return
		}
		req, _ := http.NewRequest(http.MethodPost, l.base+"/orders", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", key)
		resp, err := cl.Do(req)
		if err != nil {
			// No answer: the process died (or is not up yet). Retrying
			// the same key is safe: it names the same order.
			l.conn.Add(1)
			time.Sleep(20 * time.Millisecond)
			continue
		}
		var out struct {
			ID    string `json:"id"`
			Error string `json:"error"`
		}
		derr := json.NewDecoder(resp.Body).Decode(&out)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusAccepted:
			if derr != nil || out.ID != want {
				l.fail("order %d: 202 with id %q (decode %v); want %s", i, out.ID, derr, want)
				return
			}
			l.ids[i] = out.ID
			l.acc.Add(1)
			return
		case http.StatusServiceUnavailable:
			l.s503.Add(1)
		case http.StatusConflict:
			l.s409.Add(1)
		default:
			l.fail("order %d: POST /orders = %d %s", i, resp.StatusCode, out.Error)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// chaosScenario runs the flow of the package comment on setup s.
func chaosScenario(t *testing.T, s chaosSetup) {
	addr := chaosFreeAddr(t)
	db := chaosOpen(t, s.dsn)
	defer db.Close()
	counts := &chaosCounts{}
	start := time.Now()
	since := func() string { return time.Since(start).Round(10 * time.Millisecond).String() }
	deadline := start.Add(chaosDeadline)

	runID := make([]byte, 4)
	_, _ = rand.Read(runID)
	load := &chaosLoad{base: "http://" + addr, run: hex.EncodeToString(runID),
		ids: make([]string, chaosOrders+1), qty: make([]int, chaosOrders+1)}
	for i := 1; i <= chaosOrders; i++ {
		load.qty[i] = 1 + mrand.IntN(7)
	}

	p := chaosStart(t, addr, s, counts)
	runs := 1
	chaosWaitReady(t, p, addr)
	t.Logf("%s run 1 ready on %s (%s)", since(), addr, sqldb.Redact(s.dsn))
	intakeDone := make(chan struct{})
	go func() {
		load.post(deadline)
		close(intakeDone)
	}()
	intakeOver := func() bool {
		select {
		case <-intakeDone:
			return true
		default:
			return false
		}
	}

	sqlCount := func(q string) int {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var n int
		if err := db.QueryRowContext(ctx, q).Scan(&n); err != nil {
			t.Logf("%s: %v", q, err)
			return -1
		}
		return n
	}
	const (
		qUnsent    = `SELECT COUNT(*) FROM ` + outbox.DefaultTable + ` WHERE sent_at IS NULL`
		qProcessed = `SELECT COUNT(*) FROM orders WHERE status = 'processed'`
		qOrders    = `SELECT COUNT(*) FROM orders`
		qSent      = `SELECT COUNT(*) FROM ` + outbox.DefaultTable + ` WHERE sent_at IS NOT NULL`
	)

	// After each restart with outbox rows pending: how long until the
	// relay publishes again (a SQLite relay waits for the dead one's lease
	// to run out).
	var (
		relayWG    sync.WaitGroup
		relayMu    sync.Mutex
		relayAfter []string
		stopWatch  = make(chan struct{})
	)
	watchRelay := func(run int, restarted time.Time, unsent int) {
		if unsent <= 0 {
			return
		}
		base := sqlCount(qSent)
		relayWG.Go(func() {
			msg := fmt.Sprintf("run %d: relay published nothing while it ran", run)
			defer func() {
				relayMu.Lock()
				relayAfter = append(relayAfter, msg)
				relayMu.Unlock()
			}()
			for {
				select {
				case <-stopWatch:
					return
				case <-time.After(20 * time.Millisecond):
				}
				if n := sqlCount(qSent); n > base {
					msg = fmt.Sprintf("run %d: relay published again %v after the restart (%d rows were pending)", run, time.Since(restarted).Round(10*time.Millisecond), unsent)
					return
				}
			}
		})
	}

	var moments []string
	var sentAtRestart int // outbox rows marked sent when the current run started
	kill := func(what string, backlogBefore float64) {
		t.Helper()
		at := since()
		accepted := load.acc.Load()
		p.kill(t)
		// The process is dead: what it left is exact now.
		unsent, rows, processed := sqlCount(qUnsent), sqlCount(qOrders), sqlCount(qProcessed)
		depth := "queue dies with the process"
		if s.depth != nil {
			_, depth = s.depth(t)
		}
		m := fmt.Sprintf("kill %d at %s (%s): %d answered 202 so far, %d order rows, %d processed, outbox unsent %d, %s, backlog metric just before %.0f",
			len(moments)+1, at, what, accepted, rows, processed, unsent, depth, backlogBefore)
		moments = append(moments, m)
		t.Log(m)
		time.Sleep(time.Duration(mrand.IntN(300)) * time.Millisecond)
		sentAtRestart = sqlCount(qSent)
		restarted := time.Now()
		p = chaosStart(t, addr, s, counts)
		runs++
		watchRelay(runs, restarted, unsent)
	}
	waitUntil := func(what string, cond func() bool) bool {
		t.Helper()
		for !cond() {
			if time.Now().After(deadline) {
				t.Errorf("%s: not before the deadline\n%s", what, p.logTail())
				return false
			}
			time.Sleep(2 * time.Millisecond)
		}
		return true
	}

	// Kill 1: during intake.
	k1 := int64(300 + mrand.IntN(1200))
	waitUntil("kill 1", func() bool { return load.acc.Load() >= k1 || intakeOver() })
	kill("during intake", chaosBacklog(addr))

	// Kill 2: while the relay publishes: outbox rows pending, and the
	// relay of this run has marked rows sent already (on SQLite it waits
	// for the dead relay's lease first, so this can be after intake).
	chaosWaitReady(t, p, addr)
	k2 := int64(2000 + mrand.IntN(1500))
	waitUntil("kill 2 (intake)", func() bool { return load.acc.Load() >= k2 || intakeOver() })
	var pendingSeen int
	waitUntil("kill 2 (relay publishing)", func() bool {
		pendingSeen = sqlCount(qUnsent)
		if pendingSeen == 0 && intakeOver() {
			return true // nothing left to catch the relay at
		}
		return pendingSeen > 0 && sqlCount(qSent) > sentAtRestart
	})
	what := fmt.Sprintf("relay publishing (%d outbox rows pending just before), intake running", pendingSeen)
	switch {
	case pendingSeen == 0:
		what = "relay: no outbox row left pending to catch it at (intake over)"
	case intakeOver():
		what = fmt.Sprintf("relay publishing (%d outbox rows pending just before), intake over", pendingSeen)
	}
	kill(what, chaosBacklog(addr))

	// Kill 3: intake over, the relay done, the consumer working through a
	// non-empty queue.
	waitUntil("intake", intakeOver)
	t.Logf("%s intake over: %d answered 202; %d requests without an answer, %d answered 503, %d answered 409 (all retried); %d orders needed retries",
		since(), load.acc.Load(), load.conn.Load(), load.s503.Load(), load.s409.Load(), load.retry.Load())
	chaosWaitReady(t, p, addr)
	waitUntil("kill 3 (outbox drained)", func() bool { return sqlCount(qUnsent) == 0 })
	var backlog float64
	waitUntil("kill 3 (backlog known)", func() bool {
		backlog = chaosBacklog(addr)
		return backlog >= 0
	})
	p0 := sqlCount(qProcessed)
	target := p0 + int(backlog*(0.1+0.5*mrand.Float64()))
	waitUntil("kill 3 (consumption)", func() bool { return sqlCount(qProcessed) >= target })
	what = "consumption: queue non-empty"
	if backlog <= 0 {
		what = "consumption: the queue was already empty (consumption outran intake)"
	}
	kill(what, chaosBacklog(addr))

	// Quiescence: the last run processes what is left.
	chaosWaitReady(t, p, addr)
	accepted := int(load.acc.Load())
	if s.strict {
		waitUntil("quiescence", func() bool {
			if sqlCount(qProcessed) < accepted || sqlCount(qUnsent) != 0 {
				return false
			}
			if b := chaosBacklog(addr); b > 0 {
				time.Sleep(100 * time.Millisecond)
				return false
			}
			// The broker's own count: duplicates (republished by the
			// relay) may still wait there after every order was
			// processed; the consumer acks them without effect.
			if s.depth != nil {
				if n, _ := s.depth(t); n != 0 {
					time.Sleep(500 * time.Millisecond)
					return false
				}
			}
			return true
		})
	} else {
		last, stableSince := -1, time.Now()
		waitUntil("quiescence", func() bool {
			n := sqlCount(qProcessed)
			if n != last || sqlCount(qUnsent) != 0 || chaosBacklog(addr) > 0 {
				last, stableSince = n, time.Now()
			}
			time.Sleep(50 * time.Millisecond)
			return time.Since(stableSince) > 5*time.Second
		})
	}
	t.Logf("%s quiescent; SIGTERM to run %d", since(), runs)
	close(stopWatch)
	relayWG.Wait()
	moments = append(moments, relayAfter...)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(60 * time.Second):
		t.Errorf("run %d did not exit within 60s of SIGTERM", runs)
		p.kill(t)
	}
	if p.exitErr != nil {
		t.Errorf("run %d exit after SIGTERM: %v; want 0\n%s", runs, p.exitErr, p.logTail())
	}

	chaosCheck(t, s, db, load, counts, moments, since())
}

// chaosCheck checks and reports the database and the broker after the last
// run exited.
func chaosCheck(t *testing.T, s chaosSetup, db *sql.DB, load *chaosLoad, counts *chaosCounts, moments []string, took string) {
	for _, e := range load.errs {
		t.Errorf("client: %s", e)
	}
	type row struct {
		status   string
		count    int
		quantity int
	}
	stored := map[string]row{}
	rows, err := db.Query(`SELECT id, status, processed_count, quantity FROM orders`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		var r row
		if err := rows.Scan(&id, &r.status, &r.count, &r.quantity); err != nil {
			t.Fatal(err)
		}
		stored[id] = r
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	rows.Close()

	var accepted, missing, once, never, failed, wrongQty int
	var acceptedQty, onceQty int64
	var examples []string
	acceptedSet := map[string]bool{}
	for i := 1; i <= chaosOrders; i++ {
		id := load.ids[i]
		if id == "" {
			continue
		}
		accepted++
		acceptedSet[id] = true
		acceptedQty += int64(load.qty[i])
		r, ok := stored[id]
		switch {
		case !ok:
			missing++
			examples = append(examples, "missing "+id)
		case r.quantity != load.qty[i]:
			wrongQty++
		case r.status == statusProcessed && r.count == 1:
			once++
			onceQty += int64(r.quantity)
		case r.status == statusAccepted && r.count == 0:
			never++
			if s.strict {
				examples = append(examples, "never processed "+id)
			}
		case r.status == statusFailed:
			failed++
			examples = append(examples, "failed "+id)
		default:
			examples = append(examples, fmt.Sprintf("%s: status %s, processed_count %d", id, r.status, r.count))
		}
	}
	extra := 0
	for id := range stored {
		if !acceptedSet[id] {
			extra++
		}
	}
	twice := chaosCount(t, db, `SELECT COUNT(*) FROM orders WHERE processed_count > 1`)
	unsent := chaosCount(t, db, `SELECT COUNT(*) FROM `+outbox.DefaultTable+` WHERE sent_at IS NULL`)
	outboxRows := chaosCount(t, db, `SELECT COUNT(*) FROM `+outbox.DefaultTable)
	inboxRows := chaosCount(t, db, `SELECT COUNT(*) FROM queuekit_inbox WHERE scope = 'orders'`)
	var processedQty, sold, items int64
	if err := db.QueryRow(`SELECT COALESCE(SUM(quantity * processed_count), 0) FROM orders`).Scan(&processedQty); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow(`SELECT COUNT(*), COALESCE(SUM($1 - quantity), 0) FROM stock`, int64(defaultInitialStock)).Scan(&items, &sold); err != nil {
		t.Fatal(err)
	}
	depth, depthText := -1, "n/a (the memory queue died with the process)"
	if s.depth != nil {
		depth, depthText = s.depth(t)
	}

	t.Logf("FIGURES after %s, 3 SIGKILLs + final SIGTERM:", took)
	for _, m := range moments {
		t.Logf("  %s", m)
	}
	t.Logf("  clients: %d orders posted, %d answered 202 (%d needed retries: %d requests unanswered, %d answered 503, %d answered 409)",
		chaosOrders, accepted, load.retry.Load(), load.conn.Load(), load.s503.Load(), load.s409.Load())
	t.Logf("  orders table: %d rows (%d accepted ones missing, %d not answered 202, %d with a wrong quantity)", len(stored), missing, extra, wrongQty)
	t.Logf("  processed exactly once: %d; processed_count > 1: %d; never processed (status accepted): %d; failed: %d",
		once, twice, never, failed)
	t.Logf("  outbox: %d rows, %d unsent; queue at the end: %s", outboxRows, unsent, depthText)
	t.Logf("  inbox: %d keys; deliveries handled ok %d, effects committed (logged) %d, duplicates skipped by the inbox %d, failed deliveries %d",
		inboxRows, counts.handledOK.Load(), counts.processed.Load(), counts.handledOK.Load()-counts.processed.Load(), counts.handledFail.Load())
	t.Logf("  stock: %d items, sold %d; processed quantities %d; accepted quantities %d", items, sold, processedQty, acceptedQty)
	if !s.strict {
		t.Logf("  LOSS (expected with -broker memory): %d of %d accepted orders never processed (the memory queue held them at a SIGKILL)", never, accepted)
	}

	// What must hold everywhere.
	if missing > 0 || wrongQty > 0 || extra > 0 {
		t.Errorf("orders table: %d accepted orders missing, %d rows not answered 202, %d wrong quantities; e.g. %v", missing, extra, wrongQty, examples[:min(5, len(examples))])
	}
	if twice > 0 {
		t.Errorf("%d orders processed more than once", twice)
	}
	if unsent > 0 {
		t.Errorf("%d outbox rows left unsent", unsent)
	}
	if outboxRows != len(stored) {
		t.Errorf("%d outbox rows for %d orders; want one each", outboxRows, len(stored))
	}
	if sold != processedQty {
		t.Errorf("stock sold %d; want %d, the processed quantities", sold, processedQty)
	}
	if int64(inboxRows) != int64(once+twice) && s.strict {
		t.Errorf("%d inbox keys for %d processed orders", inboxRows, once+twice)
	}
	if !s.strict {
		return
	}
	// Strict: every accepted order processed exactly once, the queue empty.
	if accepted != chaosOrders {
		t.Errorf("%d of %d orders answered 202", accepted, chaosOrders)
	}
	if once != accepted {
		t.Errorf("%d of %d accepted orders processed exactly once; e.g. %v", once, accepted, examples[:min(5, len(examples))])
	}
	if depth != 0 {
		t.Errorf("queue at the end: %s; want empty", depthText)
	}
	if sold != acceptedQty {
		t.Errorf("stock sold %d; want %d, the accepted quantities", sold, acceptedQty)
	}
}

// chaosBacklog reads the orders consumer's backlog from /metrics: -1 when
// the service does not answer or does not say.
func chaosBacklog(addr string) float64 {
	cl := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := cl.Get("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "queuekit_backlog_messages{") && strings.Contains(line, `consumer="orders"`) {
			f := strings.Fields(line)
			if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
				return v
			}
		}
	}
	return -1
}

// chaosWaitReady waits until /readyz answers 200.
func chaosWaitReady(t *testing.T, p *chaosProc, addr string) {
	t.Helper()
	cl := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := time.Now().Add(90 * time.Second)
	for {
		if resp, err := cl.Get("http://" + addr + "/readyz"); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-p.exited:
			t.Fatalf("service exited: %v\n%s", p.exitErr, p.logTail())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz never answered 200\n%s", p.logTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// chaosFreeAddr returns a loopback address with a port free now: every run
// of a scenario listens on it, so that clients retry the same URL.
func chaosFreeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func chaosOpen(t *testing.T, dsn string) *sql.DB {
	t.Helper()
	db, _, err := sqldb.Open(dsn)
	if err != nil {
		t.Fatal(err)
	}
	return db
}

func chaosCount(t *testing.T, db *sql.DB, q string) int {
	t.Helper()
	var n int
	if err := db.QueryRow(q).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

// chaosVhost creates a RabbitMQ vhost queuekit-test-<random> for guest,
// deleted at the end, and returns it and its AMQP URL.
func chaosVhost(t *testing.T) (vhost, amqpURL string) {
	t.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	vhost = "queuekit-test-" + hex.EncodeToString(b)
	if _, err := rabbitmqctl("-q", "add_vhost", vhost); err != nil {
		t.Fatalf("RabbitMQ: %v", err)
	}
	t.Cleanup(func() {
		var err error
		for range 3 {
			if _, err = rabbitmqctl("-q", "delete_vhost", vhost); err == nil {
				return
			}
		}
		t.Errorf("vhost %s left on the broker: %v", vhost, err)
	})
	if _, err := rabbitmqctl("-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"); err != nil {
		t.Fatalf("RabbitMQ: %v", err)
	}
	return vhost, "amqp://guest:guest@127.0.0.1:5672/" + url.PathEscape(vhost)
}

// chaosRabbitDepth lists the vhost's queues with rabbitmqctl: the orders
// queue's messages (ready + unacknowledged), and every queue for the report.
func chaosRabbitDepth(t *testing.T, vhost string) (int, string) {
	t.Helper()
	out, err := rabbitmqctl("-q", "-p", vhost, "list_queues", "name", "messages")
	if err != nil {
		t.Errorf("%v", err)
		return -1, err.Error()
	}
	depth := -1
	var parts []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 || f[0] == "name" {
			continue
		}
		parts = append(parts, f[0]+"="+f[1])
		if f[0] == "orders" {
			depth, _ = strconv.Atoi(f[1])
		}
	}
	return depth, "rabbitmqctl list_queues: " + strings.Join(parts, " ")
}
