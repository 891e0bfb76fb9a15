package inbox_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/retry"
	"github.com/queuekit/queuekit/sql/inbox"
	"github.com/queuekit/queuekit/sql/internal/sqltest"
	"github.com/queuekit/queuekit/sql/sqldb"
)

// newInbox returns a migrated inbox on db.
func newInbox(t testing.TB, db *sql.DB, cfg inbox.Config) *inbox.Inbox {
	t.Helper()
	ib, err := inbox.New(db, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := ib.Migrate(ctx); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	return ib
}

// effects is a table of counters, one row per message, that handlers
// increment: the effect whose exactly-once the inbox must ensure.
func createEffects(t testing.TB, db *sql.DB) {
	t.Helper()
	if _, err := db.Exec(`CREATE TABLE effects (id TEXT PRIMARY KEY, n INTEGER NOT NULL)`); err != nil {
		t.Fatal(err)
	}
}

const incrementSQL = `INSERT INTO effects (id, n) VALUES ($1, 1) ON CONFLICT (id) DO UPDATE SET n = effects.n + 1`

// increment applies the effect of message id in the inbox's transaction.
func increment(ctx context.Context, id string) error {
	tx := inbox.Tx(ctx)
	if tx == nil {
		return errors.New("no inbox transaction in the context")
	}
	_, err := tx.ExecContext(ctx, incrementSQL, id)
	return err
}

// effectOf returns the counter of id, 0 when it has none.
func effectOf(t testing.TB, db *sql.DB, id string) int {
	t.Helper()
	var n int
	err := db.QueryRow(`SELECT n FROM effects WHERE id = $1`, id).Scan(&n)
	if errors.Is(err, sql.ErrNoRows) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// inboxRows counts the rows of the default inbox table.
func inboxRows(t testing.TB, db *sql.DB) int {
	t.Helper()
	var n int
	if err := db.QueryRow(`SELECT COUNT(*) FROM queuekit_inbox`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func msg(key string) *broker.Message {
	return &broker.Message{ID: "m-" + key, Topic: "orders", Body: []byte(key), Header: map[string]string{broker.HeaderIdempotencyKey: key}, Attempt: 1}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestDuplicateIsAckedWithoutRunningTheHandler(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		createEffects(t, db)
		ib := newInbox(t, db, inbox.Config{})
		var runs atomic.Int32
		h := ib.Middleware()(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			runs.Add(1)
			return increment(ctx, string(m.Body))
		}))
		ctx := ctxT(t)
		for n := range 3 {
			if err := h.Handle(ctx, msg("order-1")); err != nil {
				t.Fatalf("delivery %d: Handle = %v; want nil", n+1, err)
			}
		}
		if got := runs.Load(); got != 1 {
			t.Errorf("handler ran %d times for 3 deliveries; want 1", got)
		}
		if got := effectOf(t, db, "order-1"); got != 1 {
			t.Errorf("effect = %d; want 1", got)
		}
		// Another scope handles the same message once more.
		other := newInbox(t, db, inbox.Config{Scope: "audit"})
		h2 := other.Middleware()(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			runs.Add(1)
			return nil
		}))
		for range 2 {
			if err := h2.Handle(ctx, msg("order-1")); err != nil {
				t.Fatal(err)
			}
		}
		if got := runs.Load(); got != 2 {
			t.Errorf("runs after a second scope = %d; want 2", got)
		}
	})
}

func TestFailureRollsBackTheEffectAndTheKey(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		createEffects(t, db)
		ib := newInbox(t, db, inbox.Config{})
		errBoom := errors.New("boom")
		fail := true
		var runs int
		h := ib.Middleware()(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			runs++
			if err := increment(ctx, "order-1"); err != nil {
				return err
			}
			if fail {
				return errBoom
			}
			return nil
		}))
		ctx := ctxT(t)
		if err := h.Handle(ctx, msg("order-1")); !errors.Is(err, errBoom) {
			t.Fatalf("Handle = %v; want the handler's error", err)
		}
		if got := effectOf(t, db, "order-1"); got != 0 {
			t.Errorf("effect after a failure = %d; want 0 (rolled back)", got)
		}
		if got := inboxRows(t, db); got != 0 {
			t.Errorf("inbox rows after a failure = %d; want 0 (rolled back)", got)
		}
		fail = false
		if err := h.Handle(ctx, msg("order-1")); err != nil {
			t.Fatalf("redelivery: Handle = %v", err)
		}
		if err := h.Handle(ctx, msg("order-1")); err != nil {
			t.Fatalf("duplicate: Handle = %v", err)
		}
		if runs != 2 || effectOf(t, db, "order-1") != 1 {
			t.Errorf("runs = %d, effect = %d; want 2, 1", runs, effectOf(t, db, "order-1"))
		}
	})
}

func TestHandlerErrorsKeepTheirClass(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		for _, mode := range []inbox.Mode{inbox.Transactional, inbox.Lease} {
			t.Run(mode.String(), func(t *testing.T) {
				ib := newInbox(t, db, inbox.Config{Mode: mode, Scope: mode.String()})
				h := ib.Middleware()(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
					return retry.Permanent(errors.New("bad payload"))
				}))
				err := h.Handle(ctxT(t), msg("k"))
				if !retry.IsPermanent(err) || err.Error() != "bad payload" {
					t.Errorf("Handle = %v; want the handler's permanent error unchanged", err)
				}
			})
		}
	})
}

func TestPanicRollsBackAndGoesOn(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		createEffects(t, db)
		for _, mode := range []inbox.Mode{inbox.Transactional, inbox.Lease} {
			t.Run(mode.String(), func(t *testing.T) {
				ib := newInbox(t, db, inbox.Config{Mode: mode, Scope: mode.String()})
				id := "panic-" + mode.String()
				panicking := true
				inner := ib.Middleware()(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
					if tx := inbox.Tx(ctx); tx != nil {
						if err := increment(ctx, id); err != nil {
							return err
						}
					}
					if panicking {
						panic("handler bug")
					}
					return nil
				}))
				ctx := ctxT(t)
				// Through Recover: an error of this message.
				h := middleware.Recover()(inner)
				err := h.Handle(ctx, msg(id))
				var pe *consumer.PanicError
				if !errors.As(err, &pe) {
					t.Fatalf("Handle through Recover = %v; want a *consumer.PanicError", err)
				}
				// Without Recover: the same panic value reaches the caller.
				func() {
					defer func() {
						if p := recover(); p != "handler bug" {
							t.Errorf("recovered %v; want the handler's panic value", p)
						}
					}()
					_ = inner.Handle(ctx, msg(id))
				}()
				if got := effectOf(t, db, id); got != 0 {
					t.Errorf("effect after panics = %d; want 0", got)
				}
				// Rolled back / released: the next delivery runs at once (on
				// SQLite a transaction left open would block it for good).
				panicking = false
				if err := h.Handle(ctx, msg(id)); err != nil {
					t.Fatalf("after the panics: Handle = %v", err)
				}
				want := 0
				if mode == inbox.Transactional {
					want = 1
				}
				if got := effectOf(t, db, id); got != want {
					t.Errorf("effect = %d; want %d", got, want)
				}
			})
		}
	})
}

func TestMessageWithoutKey(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		for _, mode := range []inbox.Mode{inbox.Transactional, inbox.Lease} {
			t.Run(mode.String(), func(t *testing.T) {
				ran := false
				next := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error { ran = true; return nil })
				ctx := ctxT(t)
				noKey := &broker.Message{ID: "delivery-1", Body: []byte(`{"order":7}`)}

				ib := newInbox(t, db, inbox.Config{Mode: mode})
				err := ib.Middleware()(next).Handle(ctx, noKey)
				if !errors.Is(err, inbox.ErrNoKey) || !retry.IsPermanent(err) {
					t.Errorf("no header, no Key: Handle = %v; want ErrNoKey marked permanent", err)
				}

				keyErr := newInbox(t, db, inbox.Config{Mode: mode, Key: func(*broker.Message) (string, error) {
					return "", errors.New("body has no order id")
				}})
				err = keyErr.Middleware()(next).Handle(ctx, noKey)
				if !errors.Is(err, inbox.ErrNoKey) || !retry.IsPermanent(err) || !strings.Contains(err.Error(), "body has no order id") {
					t.Errorf("Key fails: Handle = %v; want ErrNoKey with the Key's error, permanent", err)
				}
				if ran {
					t.Fatal("the handler ran for a message without a key")
				}

				byBody := newInbox(t, db, inbox.Config{Mode: mode, Scope: "by-body-" + mode.String(), Key: func(m *broker.Message) (string, error) {
					return string(m.Body), nil
				}})
				for range 2 {
					if err := byBody.Middleware()(next).Handle(ctx, noKey); err != nil {
						t.Fatalf("Key from the body: Handle = %v", err)
					}
				}
				if !ran {
					t.Error("the handler did not run with a Key function")
				}
			})
		}
	})
}

// A message without a key, consumed: dead-lettered at once with the reason.
func TestMessageWithoutKeyIsDeadLettered(t *testing.T) {
	db := sqltest.SQLite(t)
	ib := newInbox(t, db, inbox.Config{})
	noop := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error { return nil })
	out := consume(t, ib.Middleware()(noop), []*broker.Message{{Body: []byte("no key")}, msg("with-key")}, 1)
	if out.dead != 1 || out.acked != 1 {
		t.Fatalf("dead letters %d, acked %d; want 1, 1", out.dead, out.acked)
	}
	dl := out.deadLetters[0]
	if dl.Header[broker.HeaderPermanent] != "true" || !strings.Contains(dl.Header[broker.HeaderError], inbox.ErrNoKey.Error()) {
		t.Errorf("dead letter headers %v; want permanent with %q", dl.Header, inbox.ErrNoKey)
	}
}

func TestLongKeysAreHashed(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		ib := newInbox(t, db, inbox.Config{})
		var runs int
		h := ib.Middleware()(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error { runs++; return nil }))
		long := strings.Repeat("k", 10000)
		for _, k := range []string{long, long, long + "x"} {
			if err := h.Handle(ctxT(t), msg(k)); err != nil {
				t.Fatal(err)
			}
		}
		if runs != 2 {
			t.Errorf("runs = %d; want 2", runs)
		}
	})
}

// Concurrent deliveries of one message, 8 at a time: the handler runs once,
// never two at once, in every mode.
func TestConcurrentDuplicatesNeverRunTwice(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		if d == sqldb.Postgres {
			db.SetMaxOpenConns(32)
		}
		createEffects(t, db)
		cases := []struct {
			name string
			cfg  inbox.Config
		}{
			{"transactional", inbox.Config{Scope: "tx"}},
			{"lease-wait", inbox.Config{Scope: "wait", Mode: inbox.Lease, Busy: inbox.Wait}},
			{"lease-requeue", inbox.Config{Scope: "requeue", Mode: inbox.Lease, Busy: inbox.Requeue}},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				ib := newInbox(t, db, c.cfg)
				const keys, workers = 20, 8
				var inflight, runs [keys]atomic.Int32
				var overlap atomic.Int32
				h := ib.Middleware()(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
					k := int(m.Body[0])
					if inflight[k].Add(1) > 1 {
						overlap.Add(1)
					}
					defer inflight[k].Add(-1)
					runs[k].Add(1)
					time.Sleep(time.Millisecond) // widen the window for a second run
					if tx := inbox.Tx(ctx); tx != nil {
						_, err := tx.ExecContext(ctx, incrementSQL, fmt.Sprintf("%s-%d", c.name, k))
						return err
					}
					return nil
				}))
				ctx := ctxT(t)
				var wg sync.WaitGroup
				for k := range keys {
					for range workers {
						wg.Go(func() {
							m := msg(fmt.Sprintf("%s-%d", c.name, k))
							m.Body = []byte{byte(k)}
							for {
								err := h.Handle(ctx, m)
								if err == nil {
									return
								}
								if !errors.Is(err, inbox.ErrBusy) {
									t.Errorf("Handle = %v", err)
									return
								}
								d, _ := retry.RetryAfter(err)
								if !retry.Sleep(ctx, min(d, 5*time.Millisecond)) {
									t.Errorf("still busy at the deadline: %v", err)
									return
								}
							}
						})
					}
				}
				wg.Wait()
				for k := range keys {
					if got := runs[k].Load(); got != 1 {
						t.Errorf("key %d: handler ran %d times for %d concurrent deliveries; want 1", k, got, workers)
					}
				}
				if n := overlap.Load(); n != 0 {
					t.Errorf("%d runs overlapped another run of the same key", n)
				}
			})
		}
	})
}

func TestTxIsNilOutsideTransactionalMode(t *testing.T) {
	if tx := inbox.Tx(context.Background()); tx != nil {
		t.Errorf("Tx(Background) = %v; want nil", tx)
	}
	db := sqltest.SQLite(t)
	ib := newInbox(t, db, inbox.Config{Mode: inbox.Lease})
	var got *sql.Tx
	seen := false
	h := ib.Middleware()(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		got, seen = inbox.Tx(ctx), true
		return nil
	}))
	if err := h.Handle(ctxT(t), msg("k")); err != nil || !seen || got != nil {
		t.Errorf("Lease mode: Handle = %v, ran %v, Tx = %v; want nil, true, nil", err, seen, got)
	}
}

func TestNewRejectsInvalidConfig(t *testing.T) {
	db := sqltest.SQLite(t)
	for _, c := range []struct {
		name string
		cfg  inbox.Config
	}{
		{"table name with a quote", inbox.Config{Table: `inbox"; DROP TABLE x; --`}},
		{"unknown mode", inbox.Config{Mode: 7}},
		{"unknown busy", inbox.Config{Busy: 9}},
		{"tiny lease", inbox.Config{Mode: inbox.Lease, LeaseTime: time.Millisecond}},
		{"negative retention", inbox.Config{Retention: -time.Hour}},
	} {
		if _, err := inbox.New(db, c.cfg); !errors.Is(err, broker.ErrInvalidConfig) {
			t.Errorf("New(%s) = %v; want an error wrapping broker.ErrInvalidConfig", c.name, err)
		}
	}
	if _, err := inbox.New(nil, inbox.Config{}); !errors.Is(err, broker.ErrInvalidConfig) {
		t.Errorf("New(nil db) = %v; want ErrInvalidConfig", err)
	}
}

func TestMigrate(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		ctx := ctxT(t)
		t.Run("twice and at once", func(t *testing.T) {
			ib, err := inbox.New(db, inbox.Config{Table: "public_inbox"})
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			errs := make(chan error, 4)
			for range 4 {
				wg.Go(func() { errs <- ib.Migrate(ctx) })
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Errorf("Migrate = %v", err)
				}
			}
			if err := ib.Migrate(ctx); err != nil {
				t.Errorf("Migrate again = %v", err)
			}
		})
		for _, c := range []struct{ name, ddl, column string }{
			{"missing column", `CREATE TABLE wrong_missing (scope TEXT NOT NULL, key TEXT NOT NULL, done_at %[1]s, lease_token TEXT, PRIMARY KEY (scope, key))`, "lease_until"},
			{"wrong type", `CREATE TABLE wrong_type (scope TEXT NOT NULL, key INTEGER NOT NULL, done_at %[1]s, lease_token TEXT, lease_until %[1]s, PRIMARY KEY (scope, key))`, "key"},
		} {
			t.Run(c.name, func(t *testing.T) {
				ts := "timestamptz"
				if d == sqldb.SQLite {
					ts = "INTEGER"
				}
				if _, err := db.ExecContext(ctx, fmt.Sprintf(c.ddl, ts)); err != nil {
					t.Fatal(err)
				}
				table := strings.Fields(c.ddl)[2]
				ib, err := inbox.New(db, inbox.Config{Table: table})
				if err != nil {
					t.Fatal(err)
				}
				err = ib.Migrate(ctx)
				if !errors.Is(err, sqldb.ErrSchema) || !strings.Contains(err.Error(), fmt.Sprintf("column %q", c.column)) {
					t.Errorf("Migrate on a table with a %s = %v; want ErrSchema naming column %q", c.name, err, c.column)
				}
			})
		}
	})
}

func TestSchemaIsWhatMigrateRuns(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		ddl, err := inbox.Schema(d, "team_inbox")
		if err != nil {
			t.Fatal(err)
		}
		ctx := ctxT(t)
		for _, stmt := range strings.Split(strings.TrimSpace(ddl), ";\n") {
			if stmt = strings.TrimSuffix(stmt, ";"); stmt != "" {
				if _, err := db.ExecContext(ctx, stmt); err != nil {
					t.Fatalf("%s: %v", stmt, err)
				}
			}
		}
		ib := newInbox(t, db, inbox.Config{Table: "team_inbox"}) // Migrate checks it
		h := ib.Middleware()(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error { return nil }))
		if err := h.Handle(ctx, msg("k")); err != nil {
			t.Fatal(err)
		}
	})
	if _, err := inbox.Schema(sqldb.Postgres, "no spaces"); err == nil {
		t.Error("Schema accepted an invalid table name")
	}
	if _, err := inbox.Schema(0, "ok"); err == nil {
		t.Error("Schema accepted an unknown dialect")
	}
}

// Two Transactional inboxes in one chain (two scopes on one database) share
// one transaction: both keys commit with the effect, or none does. On SQLite
// a second transaction would wait for the first forever.
func TestNestedInboxesShareTheTransaction(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		createEffects(t, db)
		billing := newInbox(t, db, inbox.Config{Scope: "billing"})
		audit := newInbox(t, db, inbox.Config{Scope: "audit"})
		errBoom := errors.New("boom")
		fail := true
		runs := 0
		h := consumer.Chain(billing.Middleware(), audit.Middleware())(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			runs++
			if err := increment(ctx, "order-1"); err != nil {
				return err
			}
			if fail {
				return errBoom
			}
			return nil
		}))
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := h.Handle(ctx, msg("order-1")); !errors.Is(err, errBoom) {
			t.Fatalf("Handle = %v; want the handler's error", err)
		}
		if n := inboxRows(t, db); n != 0 || effectOf(t, db, "order-1") != 0 {
			t.Fatalf("after a failure: %d keys, effect %d; want 0, 0", n, effectOf(t, db, "order-1"))
		}
		fail = false
		for range 2 {
			if err := h.Handle(ctx, msg("order-1")); err != nil {
				t.Fatal(err)
			}
		}
		if n := inboxRows(t, db); n != 2 || runs != 2 || effectOf(t, db, "order-1") != 1 {
			t.Errorf("keys %d, runs %d, effect %d; want 2, 2, 1", n, runs, effectOf(t, db, "order-1"))
		}
	})
}

// A COMMIT that fails (here a deferred foreign key the handler's insert
// violates) is returned as an error, the key is not recorded, and the
// connection is usable for the redelivery.
func TestCommitErrorIsReturned(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		ctx := ctxT(t)
		for _, s := range []string{
			`CREATE TABLE parents (id TEXT PRIMARY KEY)`,
			`CREATE TABLE children (id TEXT PRIMARY KEY, parent TEXT REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED)`,
		} {
			if _, err := db.ExecContext(ctx, s); err != nil {
				t.Fatal(err)
			}
		}
		ib := newInbox(t, db, inbox.Config{})
		runs := 0
		h := ib.Middleware()(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			runs++
			tx := inbox.Tx(ctx)
			if runs > 1 { // the redelivery brings the parent along
				if _, err := tx.ExecContext(ctx, `INSERT INTO parents (id) VALUES ('p')`); err != nil {
					return err
				}
			}
			_, err := tx.ExecContext(ctx, `INSERT INTO children (id, parent) VALUES ('c', 'p')`)
			return err
		}))
		err := h.Handle(ctx, msg("order-1"))
		if err == nil || !strings.Contains(err.Error(), "inbox: commit") {
			t.Fatalf("Handle = %v; want the commit's error", err)
		}
		if n := inboxRows(t, db); n != 0 {
			t.Errorf("keys after a failed commit = %d; want 0", n)
		}
		if err := h.Handle(ctx, msg("order-1")); err != nil || runs != 2 {
			t.Fatalf("redelivery: Handle = %v, runs %d; want nil, 2", err, runs)
		}
		if err := h.Handle(ctx, msg("order-1")); err != nil || runs != 2 {
			t.Errorf("duplicate: Handle = %v, runs %d; want nil, 2", err, runs)
		}
	})
}
