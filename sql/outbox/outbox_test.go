package outbox_test

import (
	"context"
	"database/sql"
	"errors"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/sql/internal/sqltest"
	"github.com/queuekit/queuekit/sql/outbox"
	"github.com/queuekit/queuekit/sql/sqldb"
)

var hexKey = regexp.MustCompile(`^[0-9a-f]{32}$`)

func TestWriteRolledBackPublishesNothing(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		o := migrated(t, db, outbox.Config{})
		b := memory.NewBroker()
		src := must(b.Source("orders", memory.SourceConfig{}))
		r := must(o.Relay(b.Publisher(), outbox.RelayConfig{}))
		start(t, r)

		ctx := context.Background()
		tx := must(db.BeginTx(ctx, nil))
		if err := o.Write(ctx, tx, "orders", msg("k", "rolled back")); err != nil {
			t.Fatal(err)
		}
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
		write(t, db, o, "orders", msg("k", "committed"))

		got := receive(t, src, 1)
		if string(got[0].Body) != "committed" {
			t.Fatalf("first message published = %q; want %q", got[0].Body, "committed")
		}
		waitFor(t, "no unsent row", func() bool { return unsent(t, db) == 0 })
		if n := count(t, db, `SELECT count(*) FROM queuekit_outbox`); n != 1 {
			t.Errorf("outbox rows = %d; want 1 (the rolled back write left none)", n)
		}
		if s := b.Stats("orders"); s.Published != 1 {
			t.Errorf("published = %d; want 1", s.Published)
		}
	})
}

func TestWriteCommittedPublishedOnceAsWritten(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		o := migrated(t, db, outbox.Config{})
		b := memory.NewBroker()
		src := must(b.Source("orders", memory.SourceConfig{}))

		in := []*broker.Message{
			{ID: "order-1", Key: []byte("customer-7"), Body: []byte(`{"id":1}`),
				Header: map[string]string{"content-type": "application/json", "x-trace": "abc"}},
			{Key: []byte{0, 1, 0xff}, Body: []byte{0, 0xfe, 'x'},
				Header: map[string]string{broker.HeaderIdempotencyKey: "mine"}},
			{}, // no key, no body, no headers
		}
		ctx := context.Background()
		tx := must(db.BeginTx(ctx, nil))
		// The package-level Write on the default table.
		if err := outbox.Write(ctx, tx, "orders", in...); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		if in[0].Header[broker.HeaderIdempotencyKey] != "" || in[2].Header != nil {
			t.Errorf("Write modified its messages: %v, %v", in[0].Header, in[2].Header)
		}

		r := must(o.Relay(b.Publisher(), outbox.RelayConfig{}))
		start(t, r)
		got := receive(t, src, 3)
		waitFor(t, "no unsent row", func() bool { return unsent(t, db) == 0 })
		if s := b.Stats("orders"); s.Published != 3 {
			t.Errorf("published = %d; want 3, once each", s.Published)
		}
		waitFor(t, "the relay to count them", func() bool { return r.Stats().Published >= 3 })
		if st := r.Stats(); st.Published != 3 || st.Failed != 0 {
			t.Errorf("Stats() = %+v; want Published 3, Failed 0", st)
		}

		if g := got[0]; g.ID != "order-1" || string(g.Key) != "customer-7" || string(g.Body) != `{"id":1}` ||
			g.Header["content-type"] != "application/json" || g.Header["x-trace"] != "abc" ||
			!hexKey.MatchString(g.Header[broker.HeaderIdempotencyKey]) || len(g.Header) != 3 {
			t.Errorf("message 1 = %+v; want it as written plus a random idempotency key", g)
		}
		if g := got[1]; string(g.Key) != "\x00\x01\xff" || string(g.Body) != "\x00\xfex" ||
			g.Header[broker.HeaderIdempotencyKey] != "mine" || len(g.Header) != 1 {
			t.Errorf("message 2 = %+v; want binary key and body kept, its own idempotency key", g)
		}
		if g := got[2]; g.Key != nil || len(g.Body) != 0 || !hexKey.MatchString(g.Header[broker.HeaderIdempotencyKey]) {
			t.Errorf("message 3 = %+v; want no key, empty body, a random idempotency key", g)
		}
		if got[0].Header[broker.HeaderIdempotencyKey] == got[2].Header[broker.HeaderIdempotencyKey] {
			t.Error("two messages got the same idempotency key")
		}
	})
}

func TestWriteRejectsInvalidInput(t *testing.T) {
	db := sqltest.SQLite(t)
	o := migrated(t, db, outbox.Config{})
	ctx := context.Background()
	tx := must(db.BeginTx(ctx, nil))
	defer tx.Rollback()
	for _, c := range []struct {
		name string
		tx   *sql.Tx
		dest string
		msgs []*broker.Message
	}{
		{"nil tx", nil, "q", []*broker.Message{msg("", "x")}},
		{"empty destination", tx, "", []*broker.Message{msg("", "x")}},
		{"nil message", tx, "q", []*broker.Message{msg("", "x"), nil}},
	} {
		if err := o.Write(ctx, c.tx, c.dest, c.msgs...); !errors.Is(err, broker.ErrInvalidConfig) {
			t.Errorf("Write with %s = %v; want an error wrapping broker.ErrInvalidConfig", c.name, err)
		}
	}
	if err := o.Write(ctx, tx, "q"); err != nil {
		t.Errorf("Write of no messages = %v; want nil", err)
	}
}

func TestWriteManyInOneTransaction(t *testing.T) {
	// More rows than one INSERT takes.
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		o := migrated(t, db, outbox.Config{})
		msgs := make([]*broker.Message, 1234)
		for i := range msgs {
			msgs[i] = msg("k", strings.Repeat("x", i%7))
		}
		write(t, db, o, "q", msgs...)
		if n := unsent(t, db); n != len(msgs) {
			t.Fatalf("unsent rows = %d; want %d", n, len(msgs))
		}
	})
}

func TestNewRejectsInvalidConfig(t *testing.T) {
	db := sqltest.SQLite(t)
	for _, c := range []struct {
		name string
		db   *sql.DB
		cfg  outbox.Config
	}{
		{"nil db", nil, outbox.Config{}},
		{"table name with SQL in it", db, outbox.Config{Table: "outbox; DROP TABLE orders"}},
		{"table name with a quote", db, outbox.Config{Table: `out"box`}},
	} {
		if _, err := outbox.New(c.db, c.cfg); !errors.Is(err, broker.ErrInvalidConfig) {
			t.Errorf("New with %s = %v; want an error wrapping broker.ErrInvalidConfig", c.name, err)
		}
	}
	o := migrated(t, db, outbox.Config{})
	pub := memory.NewBroker().Publisher()
	for _, c := range []struct {
		name string
		pub  broker.Publisher
		cfg  outbox.RelayConfig
	}{
		{"nil publisher", nil, outbox.RelayConfig{}},
		{"negative batch", pub, outbox.RelayConfig{Batch: -1}},
		{"huge batch", pub, outbox.RelayConfig{Batch: 1_000_000}},
		{"negative poll interval", pub, outbox.RelayConfig{PollInterval: -1}},
		{"negative publish timeout", pub, outbox.RelayConfig{PublishTimeout: -1}},
	} {
		if _, err := o.Relay(c.pub, c.cfg); !errors.Is(err, broker.ErrInvalidConfig) {
			t.Errorf("Relay with %s = %v; want an error wrapping broker.ErrInvalidConfig", c.name, err)
		}
	}
}

func TestMigrateIsIdempotentAndConcurrent(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		o := must(outbox.New(db, outbox.Config{Table: "app_outbox"}))
		var wg sync.WaitGroup
		errs := make(chan error, 4)
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs <- o.Migrate(context.Background())
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Errorf("concurrent Migrate = %v", err)
			}
		}
		if err := o.Migrate(context.Background()); err != nil {
			t.Errorf("second Migrate = %v", err)
		}
		if d == sqldb.Postgres {
			if n := count(t, db, `SELECT count(*) FROM pg_trigger WHERE tgrelid = 'app_outbox'::regclass AND NOT tgisinternal`); n != 1 {
				t.Errorf("notify triggers after three Migrates = %d; want 1", n)
			}
		}
	})
}

func TestMigrateReportsWrongSchema(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		id := "bigint"
		if d == sqldb.SQLite {
			id = "integer"
		}
		if _, err := db.Exec(`CREATE TABLE queuekit_outbox (id ` + id + ` PRIMARY KEY, dest text, body text)`); err != nil {
			t.Fatal(err)
		}
		err := must(outbox.New(db, outbox.Config{})).Migrate(context.Background())
		if !errors.Is(err, sqldb.ErrSchema) || !strings.Contains(err.Error(), `"msg_key"`) {
			t.Fatalf("Migrate on a table without msg_key = %v; want an error wrapping sqldb.ErrSchema naming the column", err)
		}
	})
}

func TestSchemaIsWhatMigrateRuns(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		ddl, err := outbox.Schema(d, "team_outbox")
		if err != nil {
			t.Fatal(err)
		}
		// Run it the way a team's migration tool would, statement by
		// statement, twice (it is idempotent); then the outbox works on it.
		for range 2 {
			for _, s := range splitStatements(ddl) {
				if _, err := db.Exec(s); err != nil {
					t.Fatalf("%s\n: %v", s, err)
				}
			}
		}
		o := migrated(t, db, outbox.Config{Table: "team_outbox"})
		write(t, db, o, "q", msg("", "x"))
		if _, err := outbox.Schema(d, "bad name"); err == nil {
			t.Error("Schema with an invalid table name = nil error")
		}
	})
}

// splitStatements splits Schema's output on its ";\n" separators, keeping
// the PL/pgSQL bodies (which end lines with ";" but not with ";\n" at the
// top level: they are inside $$ quotes).
func splitStatements(ddl string) []string {
	var out []string
	var cur strings.Builder
	inBody := false
	for _, line := range strings.SplitAfter(ddl, "\n") {
		cur.WriteString(line)
		if strings.Count(line, "$$")%2 == 1 {
			inBody = !inBody
		}
		if !inBody && strings.HasSuffix(strings.TrimSpace(line), ";") {
			out = append(out, strings.TrimSuffix(strings.TrimSpace(cur.String()), ";"))
			cur.Reset()
		}
	}
	return out
}

func TestSchemaQualifiedTable(t *testing.T) {
	db := sqltest.Postgres(t)
	if _, err := db.Exec(`CREATE SCHEMA shop`); err != nil {
		t.Fatal(err)
	}
	o := migrated(t, db, outbox.Config{Table: "shop.outbox"})
	b := memory.NewBroker()
	src := must(b.Source("q", memory.SourceConfig{}))
	r := must(o.Relay(b.Publisher(), outbox.RelayConfig{PollInterval: time2h}))
	start(t, r)
	waitFor(t, "the relay to LISTEN", func() bool { return r.Stats().Listening })
	write(t, db, o, "q", msg("", "in a schema"))
	if got := receive(t, src, 1); string(got[0].Body) != "in a schema" {
		t.Fatalf("got %q", got[0].Body)
	}
}
