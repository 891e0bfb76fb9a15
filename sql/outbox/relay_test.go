package outbox_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/sql/internal/sqltest"
	"github.com/queuekit/queuekit/sql/outbox"
	"github.com/queuekit/queuekit/sql/sqldb"
)

// time2h is a poll interval no test waits out: what the relay does in such a
// test, a notification or its own loop made it do.
const time2h = 2 * time.Hour

// quiet is the logger of relays whose warnings a test provokes.
var quiet = slog.New(slog.DiscardHandler)

func TestRelayRetriesFailedPublishAndMarksOnlyAfterSuccess(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		o := migrated(t, db, outbox.Config{})
		b := memory.NewBroker()
		src := must(b.Source("q", memory.SourceConfig{}))
		var failing atomic.Bool
		failing.Store(true)
		pub := &hookPublisher{inner: b.Publisher(), before: func(ctx context.Context, _ string, _ []*broker.Message) error {
			if failing.Load() {
				return errInjected
			}
			return nil
		}}
		write(t, db, o, "q", msg("a", "1"), msg("b", "2"), msg("", "3"))
		r := must(o.Relay(pub, outbox.RelayConfig{Logger: quiet}))
		start(t, r)

		waitFor(t, "every row to fail twice", func() bool {
			return count(t, db, `SELECT count(*) FROM queuekit_outbox WHERE attempts >= 2`) == 3
		})
		failing.Store(false)
		// Failed attempts are recorded; nothing is marked sent.
		var lastErr string
		if err := db.QueryRow(`SELECT min(last_error) FROM queuekit_outbox`).Scan(&lastErr); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(lastErr, errInjected.Error()) {
			t.Errorf("last_error = %q; want the publish error", lastErr)
		}
		if st := r.Stats(); st.Failed < 6 || !strings.Contains(st.LastError, errInjected.Error()) {
			t.Errorf("Stats() = %+v; want Failed >= 6, LastError the publish error", st)
		}
		if got := bodies(receive(t, src, 3)); !slices.Equal(got, []string{"1", "2", "3"}) {
			t.Errorf("published %q; want 1, 2, 3", got)
		}
		waitFor(t, "no unsent row", func() bool { return unsent(t, db) == 0 })
		waitFor(t, "state running", func() bool { return r.State() == consumer.StateRunning })
	})
}

// TestRelayStopsAKeyAfterItsFailedRow: a key's later rows wait for its
// failed row, also when they go to another destination; other keys go on.
func TestRelayStopsAKeyAfterItsFailedRow(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		o := migrated(t, db, outbox.Config{})
		b := memory.NewBroker()
		var failB atomic.Bool
		failB.Store(true)
		pub := &hookPublisher{inner: b.Publisher(), before: func(_ context.Context, dest string, _ []*broker.Message) error {
			if dest == "b" && failB.Load() {
				return errInjected
			}
			return nil
		}}
		write(t, db, o, "b", msg("K", "K1"))
		write(t, db, o, "a", msg("K", "K2"), msg("J", "J1"))
		write(t, db, o, "b", msg("J", "J2"))
		r := must(o.Relay(pub, outbox.RelayConfig{Logger: quiet}))
		start(t, r)
		waitFor(t, "a failed publish to b", func() bool { return r.Stats().Failed >= 2 })
		waitFor(t, "J1 published", func() bool { return len(pub.published()) >= 1 })
		if got := pub.published(); !slices.Equal(got, []string{"a/J1"}) {
			t.Fatalf("published while b fails: %q; want only a/J1 (K2 waits for K1, J2 failed)", got)
		}
		waitFor(t, "the state to say stalled", func() bool { return r.State() == consumer.StateStalled })
		failB.Store(false)
		waitFor(t, "no unsent row", func() bool { return unsent(t, db) == 0 })
		got := pub.published()
		if len(got) != 4 || slices.Index(got, "b/K1") > slices.Index(got, "a/K2") || slices.Index(got, "a/J1") > slices.Index(got, "b/J2") {
			t.Errorf("published %q; want K1 before K2 and J1 before J2, once each", got)
		}
	})
}

// orderRun writes rows per key from several writers while n relays on
// their own connection pools publish them, then checks every key's
// messages arrived in order. It returns the duplicates.
// With prewrite, the rows are all written before the relays start, so that
// every relay's first batches interleave the same keys.
func orderRun(t *testing.T, relays, keys, perKey int, faults, prewrite bool) (dups int) {
	u := sqltest.PostgresURL(t)
	open := func() *sql.DB {
		db, _, err := sqldb.Open(u)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return db
	}
	db := open()
	o := migrated(t, db, outbox.Config{})
	b := memory.NewBroker()
	src := must(b.Source("q", memory.SourceConfig{Prefetch: 100}))
	var rs []*outbox.Relay
	var failures atomic.Int64
	for i := range relays {
		var pub broker.Publisher = b.Publisher()
		if faults {
			// One publish in ten fails: half before anything is published,
			// half after (a lost confirm, which makes a duplicate).
			var n atomic.Int64
			pub = &hookPublisher{inner: pub,
				before: func(context.Context, string, []*broker.Message) error {
					if n.Add(1)%20 == 7 {
						failures.Add(1)
						return errInjected
					}
					return nil
				},
				after: func(string, []*broker.Message) error {
					if n.Load()%20 == 17 {
						failures.Add(1)
						return errInjected
					}
					return nil
				}}
		}
		r := must(must(outbox.New(open(), outbox.Config{})).Relay(pub, outbox.RelayConfig{Batch: 100, Logger: quiet}))
		rs = append(rs, r)
		_ = i
	}
	startAll := func() {
		for _, r := range rs {
			start(t, r)
		}
	}
	if !prewrite {
		startAll()
	}

	// Writers: each owns the keys k ≡ w (mod writers) and writes their rows
	// in order, one to three rows of a key per transaction, each committed
	// before the key's next.
	began := time.Now()
	var wg sync.WaitGroup
	writers := min(10, keys)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			next := map[int]int{}
			for progressed := true; progressed; {
				progressed = false
				for k := w; k < keys; k += writers {
					s := next[k]
					if s >= perKey {
						continue
					}
					n := min(1+(s+k)%3, perKey-s)
					msgs := make([]*broker.Message, n)
					for j := range msgs {
						msgs[j] = msg(fmt.Sprintf("key-%02d", k), fmt.Sprintf("key-%02d:%d", k, s+j))
					}
					if err := writeErr(db, o, "q", msgs...); err != nil {
						t.Error(err)
						return
					}
					next[k] = s + n
					progressed = true
				}
			}
		}()
	}
	wg.Wait()
	if prewrite {
		began = time.Now()
		startAll()
	}
	waitFor(t, "no unsent row", func() bool { return unsent(t, db) == 0 })
	elapsed := time.Since(began)
	// Every row is marked sent, so no relay publishes any more.
	perRelay := make([]uint64, len(rs))
	for i, r := range rs {
		perRelay[i] = r.Stats().Published
	}
	published := b.Stats("q").Published
	got := receive(t, src, published)

	seen := map[string]bool{}
	nextSeq := map[string]int{}
	for _, m := range got {
		body := string(m.Body)
		if seen[body] {
			dups++
			continue
		}
		seen[body] = true
		var k string
		var seq int
		if _, err := fmt.Sscanf(strings.Replace(body, ":", " ", 1), "%s %d", &k, &seq); err != nil {
			t.Fatalf("body %q: %v", body, err)
		}
		if k != string(m.Key) {
			t.Fatalf("message %q has key %q", body, m.Key)
		}
		if seq != nextSeq[k] {
			t.Fatalf("key %s: got seq %d after %d; want %d (per-key order broken)", k, seq, nextSeq[k]-1, nextSeq[k])
		}
		nextSeq[k]++
	}
	if len(seen) != keys*perKey {
		t.Fatalf("distinct messages published = %d; want %d", len(seen), keys*perKey)
	}
	t.Logf("%d relays (prewritten %v), %d keys × %d rows: %d distinct published in per-key order, %d publishes in all, %d duplicates, %d injected failures, per relay %v, %v",
		relays, prewrite, keys, perKey, len(seen), published, dups, failures.Load(), perRelay, elapsed.Round(time.Millisecond))
	return dups
}

// TestRelaysKeepPerKeyOrderWithoutDuplicates is the must-show:
// several relays on one PostgreSQL database, ~5,000 rows over 50 keys
// written while they run: every message published exactly once, each key's
// in the order written.
func TestRelaysKeepPerKeyOrderWithoutDuplicates(t *testing.T) {
	for _, c := range []struct {
		relays   int
		prewrite bool
	}{{2, false}, {4, false}, {4, true}} {
		name := fmt.Sprintf("%d relays, rows written while they run", c.relays)
		if c.prewrite {
			name = fmt.Sprintf("%d relays, rows written before they start", c.relays)
		}
		t.Run(name, func(t *testing.T) {
			// Each case has a database of its own; in parallel they take
			// the time of the longest, most of which the writers spend
			// waiting for their commits (CI time).
			t.Parallel()
			if dups := orderRun(t, c.relays, 50, 100, false, c.prewrite); dups != 0 {
				t.Errorf("duplicates = %d; want none under normal operation", dups)
			}
		})
	}
}

// TestRelaysKeepPerKeyOrderThroughFailures: with publishes failing (some
// after the broker took the messages), every message still arrives and the
// first arrival of each is in per-key order; duplicates are the failed
// confirms' republishes.
func TestRelaysKeepPerKeyOrderThroughFailures(t *testing.T) {
	orderRun(t, 3, 20, 50, true, false)
}

// killedRelay runs relay A until it is blocked publishing its third batch
// (holding the batch's rows), kills it with kill, and checks that relay B
// publishes everything, in per-key order. It returns the duplicates.
//
// With stale, A is alive after kill: once B is done, A's blocked Publish
// goes through (a relay that lost its batch and does not know it yet), and
// killedRelay waits for it.
func killedRelay(t *testing.T, stale bool, kill func(t *testing.T, stopA func(), adminDB *sql.DB)) (dups int) {
	u := sqltest.PostgresURL(t)
	open := func() *sql.DB {
		db, _, err := sqldb.Open(u)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return db
	}
	db := open()
	o := migrated(t, db, outbox.Config{})
	const keys, perKey = 10, 100
	for s := range perKey {
		msgs := make([]*broker.Message, keys)
		for k := range keys {
			msgs[k] = msg(fmt.Sprintf("k%d", k), fmt.Sprintf("k%d:%d", k, s))
		}
		write(t, db, o, "q", msgs...)
	}
	b := memory.NewBroker()
	src := must(b.Source("q", memory.SourceConfig{Prefetch: 100}))

	var calls atomic.Int32
	blocked := make(chan struct{})
	unblock := make(chan struct{})
	pubA := &hookPublisher{inner: b.Publisher(), before: func(ctx context.Context, _ string, _ []*broker.Message) error {
		if calls.Add(1) != 3 {
			return nil
		}
		close(blocked)
		select {
		case <-unblock:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}}
	relayA := must(must(outbox.New(open(), outbox.Config{})).Relay(pubA, outbox.RelayConfig{DisableListen: true, Logger: quiet}))
	stopA := start(t, relayA)
	select {
	case <-blocked:
	case <-time.After(eventually):
		t.Fatal("relay A never published a third batch")
	}
	kill(t, stopA, db)
	relayB := must(must(outbox.New(open(), outbox.Config{})).Relay(b.Publisher(), outbox.RelayConfig{}))
	start(t, relayB)
	waitFor(t, "no unsent row", func() bool { return unsent(t, db) == 0 })
	close(unblock) // relay A, if alive, publishes its stale batch now
	if stale {
		waitFor(t, "relay A's stale publish", func() bool { return b.Stats("q").Published > keys*perKey })
		waitFor(t, "relay A to fail marking it", func() bool { return strings.Contains(relayA.Stats().LastError, "mark") })
	}
	stopA()
	published := b.Stats("q").Published
	seen := map[string]bool{}
	next := map[string]int{}
	for _, m := range receive(t, src, published) {
		if seen[string(m.Body)] {
			dups++
			continue
		}
		seen[string(m.Body)] = true
		var seq int
		fmt.Sscanf(strings.SplitN(string(m.Body), ":", 2)[1], "%d", &seq)
		if k := string(m.Key); seq != next[k] {
			t.Fatalf("key %s: first arrival of seq %d; want %d", k, seq, next[k])
		}
		next[string(m.Key)]++
	}
	if len(seen) != keys*perKey {
		t.Fatalf("distinct messages = %d; want %d", len(seen), keys*perKey)
	}
	t.Logf("relay A published %d, relay B %d, %d duplicates", relayA.Stats().Published, relayB.Stats().Published, dups)
	return dups
}

func TestRelayKilledMidBatchOtherRelayPublishesTheRest(t *testing.T) {
	t.Run("ctx cancelled", func(t *testing.T) {
		dups := killedRelay(t, false, func(t *testing.T, stopA func(), _ *sql.DB) {
			stopA() // the blocked Publish is cancelled; A commits what it marked and returns
		})
		if dups != 0 {
			t.Errorf("duplicates = %d; want 0: A's cancelled publish published nothing", dups)
		}
	})
	t.Run("connection killed", func(t *testing.T) {
		dups := killedRelay(t, true, func(t *testing.T, _ func(), db *sql.DB) {
			// A's transaction, holding the batch, dies with its connection.
			n := count(t, db, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
				WHERE datname = current_database() AND state = 'idle in transaction'`)
			if n != 1 {
				t.Fatalf("terminated %d backends; want relay A's one", n)
			}
		})
		if dups != 100 {
			t.Errorf("duplicates = %d; want 100: the one batch A published after losing it, no more", dups)
		}
	})
}

func TestRelayCleansUpSentRows(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		for _, c := range []struct {
			name      string
			retention time.Duration
		}{{"after retention", 50 * time.Millisecond}, {"at once", -1}} {
			t.Run(c.name, func(t *testing.T) {
				if _, err := db.Exec(`DROP TABLE IF EXISTS queuekit_outbox`); err != nil {
					t.Fatal(err)
				}
				o := migrated(t, db, outbox.Config{})
				b := memory.NewBroker()
				src := must(b.Source("q", memory.SourceConfig{Prefetch: 10}))
				for i := range 25 {
					write(t, db, o, "q", msg("", fmt.Sprint(i)))
				}
				r := must(o.Relay(b.Publisher(), outbox.RelayConfig{Retention: c.retention, Batch: 10}))
				stop := start(t, r)
				receive(t, src, 25)
				waitFor(t, "an empty outbox table", func() bool {
					return count(t, db, `SELECT count(*) FROM queuekit_outbox`) == 0
				})
				stop()
				if st := r.Stats(); st.Published != 25 || (c.retention > 0 && st.Deleted != 25) {
					t.Errorf("Stats() = %+v; want Published 25 (and Deleted 25 after a retention)", st)
				}
			})
		}
	})
}

func TestRelayWakesOnNotifyAndListensAgainAfterLosingIt(t *testing.T) {
	db := sqltest.Postgres(t)
	o := migrated(t, db, outbox.Config{})
	b := memory.NewBroker()
	src := must(b.Source("q", memory.SourceConfig{}))
	r := must(o.Relay(b.Publisher(), outbox.RelayConfig{PollInterval: time2h, Logger: quiet}))
	start(t, r)
	waitFor(t, "the relay to LISTEN", func() bool { return r.Stats().Listening })
	write(t, db, o, "q", msg("", "woken"))
	if got := receive(t, src, 1); string(got[0].Body) != "woken" {
		t.Fatalf("got %q", got[0].Body)
	}

	listener := func() int {
		var pid int
		err := db.QueryRow(`SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'`).Scan(&pid)
		if err != nil {
			return 0
		}
		return pid
	}
	old := listener()
	if old == 0 {
		t.Fatal("no LISTEN connection in pg_stat_activity")
	}
	if _, err := db.Exec(`SELECT pg_terminate_backend($1)`, old); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a new LISTEN connection", func() bool { p := listener(); return p != 0 && p != old })
	waitFor(t, "the relay to LISTEN again", func() bool { return r.Stats().Listening })
	write(t, db, o, "q", msg("", "woken again"))
	if got := receive(t, src, 1); string(got[0].Body) != "woken again" {
		t.Fatalf("got %q", got[0].Body)
	}
}

func TestRelayWithDatabaseDownRetriesAndIsNotReady(t *testing.T) {
	// Nothing listens on port 1; the URL carries a password that must not
	// leak into errors, stats or logs.
	db, _, err := sqldb.Open("postgres://app:s3cr3t-pw@127.0.0.1:1/shop?sslmode=disable&connect_timeout=5")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	o := must(outbox.New(db, outbox.Config{}))
	var logs bytes.Buffer
	var logMu sync.Mutex
	r := must(o.Relay(memory.NewBroker().Publisher(), outbox.RelayConfig{
		Logger: slog.New(slog.NewTextHandler(&lockedWriter{w: &logs, mu: &logMu}, nil)),
	}))
	var sup consumer.Supervisor
	if err := sup.Add("outbox", r); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()

	waitFor(t, "two failed rounds", func() bool { return r.Stats().LastError != "" && r.Stats().Rounds >= 2 })
	if s := r.State(); s != consumer.StateReconnecting {
		t.Errorf("State() = %v; want reconnecting", s)
	}
	if h := sup.Health(); h.Ready {
		t.Errorf("Health() = %+v; want not ready", h)
	}
	st := r.Stats()
	if !strings.Contains(st.LastError, "127.0.0.1") {
		t.Errorf("LastError = %q; want it to say which server failed", st.LastError)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Supervisor.Run = %v", err)
	}
	logMu.Lock()
	defer logMu.Unlock()
	for what, s := range map[string]string{"LastError": st.LastError, "log": logs.String()} {
		if strings.Contains(s, "s3cr3t") {
			t.Errorf("%s contains the password: %s", what, s)
		}
	}
	t.Logf("LastError: %s", st.LastError)
}

type lockedWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func TestRelayRecoversWhenTheTableAppears(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		o := must(outbox.New(db, outbox.Config{}))
		b := memory.NewBroker()
		src := must(b.Source("q", memory.SourceConfig{}))
		r := must(o.Relay(b.Publisher(), outbox.RelayConfig{Logger: slog.New(slog.DiscardHandler)}))
		var sup consumer.Supervisor
		if err := sup.Add("outbox", r); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- sup.Run(ctx) }()
		defer func() {
			cancel()
			<-done
		}()
		waitFor(t, "a failed round", func() bool { return r.Stats().LastError != "" })
		if h := sup.Health(); h.Ready || r.State() != consumer.StateReconnecting {
			t.Errorf("without a table: State() = %v, Health().Ready = %v; want reconnecting, not ready", r.State(), h.Ready)
		}
		if err := o.Migrate(context.Background()); err != nil {
			t.Fatal(err)
		}
		write(t, db, o, "q", msg("", "after migrate"))
		receive(t, src, 1)
		waitFor(t, "ready", func() bool { return sup.Health().Ready })
	})
}

// TestSQLiteRelaysTakeTurns: two relays on one SQLite file (two *sql.DB, as
// two processes would have): one publishes, the other stands by, and takes
// over when the first stops.
func TestSQLiteRelaysTakeTurns(t *testing.T) {
	path := sqltest.SQLitePath(t)
	open := func() *sql.DB {
		db, _, err := sqldb.Open("sqlite:" + path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return db
	}
	db1, db2 := open(), open()
	o1 := migrated(t, db1, outbox.Config{})
	o2 := must(outbox.New(db2, outbox.Config{}))
	b := memory.NewBroker()
	src := must(b.Source("q", memory.SourceConfig{}))
	r1 := must(o1.Relay(b.Publisher(), outbox.RelayConfig{}))
	stop1 := start(t, r1)
	waitFor(t, "relay 1 to take the lease", func() bool { return r1.Stats().Rounds > 0 && !r1.Stats().Standby })
	r2 := must(o2.Relay(b.Publisher(), outbox.RelayConfig{}))
	start(t, r2)
	waitFor(t, "relay 2 to stand by", func() bool { return r2.Stats().Standby })
	for i := range 20 {
		write(t, db1, o1, "q", msg("k", fmt.Sprint(i)))
	}
	receive(t, src, 20)
	waitFor(t, "relay 1 to count them", func() bool { return r1.Stats().Published == 20 })
	if p1, p2 := r1.Stats().Published, r2.Stats().Published; p1 != 20 || p2 != 0 {
		t.Errorf("published by relay 1, relay 2 = %d, %d; want 20, 0", p1, p2)
	}
	if s := r2.State(); s != consumer.StateRunning {
		t.Errorf("standby State() = %v; want running", s)
	}
	stop1() // gives the lease up
	waitFor(t, "relay 2 to take over", func() bool { return !r2.Stats().Standby })
	write(t, db2, o2, "q", msg("k", "20"))
	receive(t, src, 1)
	waitFor(t, "relay 2 to count it", func() bool { return r2.Stats().Published > 0 })
	if p2 := r2.Stats().Published; p2 != 1 {
		t.Errorf("published by relay 2 after relay 1 stopped = %d; want 1", p2)
	}
}

func TestRelayRunTwiceAtOnce(t *testing.T) {
	db := sqltest.SQLite(t)
	r := must(migrated(t, db, outbox.Config{}).Relay(memory.NewBroker().Publisher(), outbox.RelayConfig{}))
	stop := start(t, r)
	waitFor(t, "a round", func() bool { return r.Stats().Rounds > 0 })
	if err := r.Run(context.Background()); !errors.Is(err, consumer.ErrAlreadyRunning) {
		t.Errorf("second Run = %v; want an error wrapping consumer.ErrAlreadyRunning", err)
	}
	stop()
	if s := r.State(); s != consumer.StateStopped {
		t.Errorf("State() after Run returned = %v; want stopped", s)
	}
	start(t, r) // runs again, as a Supervisor's restart does
	waitFor(t, "running again", func() bool { return r.State() == consumer.StateRunning })
}

func TestRelaySurvivesAPanickingPublisher(t *testing.T) {
	db := sqltest.SQLite(t)
	o := migrated(t, db, outbox.Config{})
	b := memory.NewBroker()
	src := must(b.Source("q", memory.SourceConfig{}))
	var calls atomic.Int32
	pub := &hookPublisher{inner: b.Publisher(), before: func(context.Context, string, []*broker.Message) error {
		if calls.Add(1) == 1 {
			panic("publisher bug")
		}
		return nil
	}}
	write(t, db, o, "q", msg("", "x"))
	r := must(o.Relay(pub, outbox.RelayConfig{Logger: slog.New(slog.DiscardHandler)}))
	start(t, r)
	receive(t, src, 1)
	if st := r.Stats(); st.Failed != 1 || !strings.Contains(st.LastError, "publisher bug") {
		t.Errorf("Stats() = %+v; want the panic recorded as one failed publish", st)
	}
}

// TestSQLiteRelayTakesOverAnExpiredLease: a relay that died (its process
// killed) leaves its lease; another relay waits for it to expire, then
// publishes.
func TestSQLiteRelayTakesOverAnExpiredLease(t *testing.T) {
	db := sqltest.SQLite(t)
	o := migrated(t, db, outbox.Config{})
	until := time.Now().Add(2 * time.Second).UnixMilli()
	if _, err := db.Exec(`INSERT INTO queuekit_outbox_relay (name, owner, lease_until) VALUES ('relay', 'a dead process', $1)`, until); err != nil {
		t.Fatal(err)
	}
	write(t, db, o, "q", msg("k", "left by the dead relay"))
	b := memory.NewBroker()
	src := must(b.Source("q", memory.SourceConfig{}))
	r := must(o.Relay(b.Publisher(), outbox.RelayConfig{}))
	start(t, r)
	waitFor(t, "the relay to stand by", func() bool { return r.Stats().Standby })
	receive(t, src, 1)
	if now := time.Now().UnixMilli(); now < until {
		t.Errorf("published %dms before the dead relay's lease expired", until-now)
	}
}

// TestRelayOnASingleConnectionPoolPolls: LISTEN would take the only
// connection; the relay polls instead of waiting for itself.
func TestRelayOnASingleConnectionPoolPolls(t *testing.T) {
	db := sqltest.Postgres(t)
	db.SetMaxOpenConns(1)
	o := migrated(t, db, outbox.Config{})
	b := memory.NewBroker()
	src := must(b.Source("q", memory.SourceConfig{}))
	r := must(o.Relay(b.Publisher(), outbox.RelayConfig{Logger: quiet}))
	start(t, r)
	write(t, db, o, "q", msg("", "x"))
	receive(t, src, 1)
	if r.Stats().Listening {
		t.Error("Listening on a pool of one connection")
	}
}

func TestRelayStatsCountPendingRowsAndTheirAge(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		o := migrated(t, db, outbox.Config{})
		pub := &hookPublisher{inner: memory.NewBroker().Publisher(), before: func(context.Context, string, []*broker.Message) error {
			return errInjected // the broker is down
		}}
		write(t, db, o, "q", msg("a", "1"), msg("b", "2"), msg("c", "3"))
		r := must(o.Relay(pub, outbox.RelayConfig{Logger: quiet}))
		start(t, r)
		waitFor(t, "3 pending rows, older than 0s", func() bool { st := r.Stats(); return st.Pending == 3 && st.LagSeconds > 0 })
		if s := r.State(); s != consumer.StateStalled {
			t.Errorf("State() with every publish failing = %v; want stalled", s)
		}
	})
}
