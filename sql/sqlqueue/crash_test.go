package sqlqueue_test

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/sql/internal/sqltest"
	"github.com/queuekit/queuekit/sql/sqldb"
	"github.com/queuekit/queuekit/sql/sqlqueue"
)

// dsn returns the DSN of a fresh database of dialect d, for the tests that
// open it more than once, as several processes would.
func dsn(t *testing.T, d sqldb.Dialect) string {
	if d == sqldb.Postgres {
		return sqltest.PostgresURL(t)
	}
	return "sqlite:" + sqltest.SQLitePath(t)
}

func open(t *testing.T, dsn string) *sql.DB {
	t.Helper()
	db, _, err := sqldb.Open(dsn)
	if err != nil {
		t.Fatalf("sqldb.Open = %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func eachDialect(t *testing.T, fn func(t *testing.T, d sqldb.Dialect)) {
	t.Run("postgres", func(t *testing.T) { fn(t, sqldb.Postgres) })
	t.Run("sqlite", func(t *testing.T) { fn(t, sqldb.SQLite) })
}

func publish(t *testing.T, db *sql.DB, queue string, bodies ...string) {
	t.Helper()
	p, err := sqlqueue.NewPublisher(db, sqlqueue.PublisherConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	ms := make([]*broker.Message, len(bodies))
	for i, b := range bodies {
		ms[i] = &broker.Message{Body: []byte(b)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Publish(ctx, queue, ms...); err != nil {
		t.Fatalf("Publish = %v", err)
	}
}

func newSource(t *testing.T, db *sql.DB, cfg sqlqueue.Config) *sqlqueue.Source {
	t.Helper()
	src, err := sqlqueue.NewSource(db, cfg)
	if err != nil {
		t.Fatalf("NewSource = %v", err)
	}
	t.Cleanup(func() { src.Close(context.Background()) })
	return src
}

func receive(t *testing.T, src broker.Source) broker.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	d, err := src.Receive(ctx)
	if err != nil {
		t.Fatalf("Receive = %v", err)
	}
	return d
}

// expectRedelivered receives the n messages of bodies from src, each with
// Attempt 2, and acks them.
func expectRedelivered(t *testing.T, src broker.Source, bodies []string) {
	t.Helper()
	want := map[string]bool{}
	for _, b := range bodies {
		want[b] = true
	}
	for range bodies {
		d := receive(t, src)
		m := d.Message()
		if !want[string(m.Body)] {
			t.Fatalf("received %q (Attempt %d); want one of the %d messages the crashed source held, once each", m.Body, m.Attempt, len(bodies))
		}
		delete(want, string(m.Body))
		if m.Attempt != 2 {
			t.Errorf("the redelivery of %q has Attempt %d; want 2 (the crashed delivery counts)", m.Body, m.Attempt)
		}
		if err := d.Ack(context.Background()); err != nil {
			t.Fatalf("Ack = %v", err)
		}
	}
}

// TestConnectionLostRedelivers: a source whose database connection dies
// while it holds deliveries (its pool is closed under it, and it is never
// closed itself before its leases end) cannot renew its leases; once they
// end, another source receives the messages with Attempt 2, and the dead
// source's deliveries cannot settle.
func TestConnectionLostRedelivers(t *testing.T) {
	eachDialect(t, func(t *testing.T, d sqldb.Dialect) {
		url := dsn(t, d)
		dying, healthy := open(t, url), open(t, url)
		if err := sqlqueue.Migrate(context.Background(), healthy, ""); err != nil {
			t.Fatal(err)
		}
		bodies := []string{"lost-0", "lost-1", "lost-2"}
		publish(t, healthy, "jobs", bodies...)
		crashed, err := sqlqueue.NewSource(dying, sqlqueue.Config{Queue: "jobs", Prefetch: 3, Visibility: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		var held []broker.Delivery
		for range bodies {
			held = append(held, receive(t, crashed))
		}
		dying.Close()
		survivor := newSource(t, healthy, sqlqueue.Config{Queue: "jobs", Visibility: testVisibility})
		expectRedelivered(t, survivor, bodies)
		for _, d := range held {
			if err := d.Ack(context.Background()); err == nil {
				t.Errorf("Ack of %q by the source that lost its database = nil; want an error", d.Message().Body)
			}
		}
		// Stop its goroutines; there is nothing left to give back.
		crashed.Close(context.Background())
	})
}

// TestCrashRedelivers: a consumer process killed with SIGKILL while it holds
// deliveries (claimed, handed out, not settled) leaves their rows leased;
// once the leases end, another source receives them with Attempt 2.
func TestCrashRedelivers(t *testing.T) {
	eachDialect(t, func(t *testing.T, d sqldb.Dialect) {
		url := dsn(t, d)
		db := open(t, url)
		if err := sqlqueue.Migrate(context.Background(), db, ""); err != nil {
			t.Fatal(err)
		}
		bodies := []string{"crash-0", "crash-1", "crash-2", "crash-3"}
		publish(t, db, "jobs", bodies...)
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperCrashingConsumer$")
		cmd.Env = append(os.Environ(), "SQLQUEUE_CRASH_DSN="+url, "SQLQUEUE_CRASH_N="+strconv.Itoa(len(bodies)))
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err != nil || line != "claimed\n" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("the consumer process said %q, %v; want \"claimed\"", line, err)
		}
		if err := cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		cmd.Wait()
		survivor := newSource(t, db, sqlqueue.Config{Queue: "jobs", Visibility: testVisibility})
		expectRedelivered(t, survivor, bodies)
	})
}

// TestHelperCrashingConsumer is the consumer process of TestCrashRedelivers:
// it receives SQLQUEUE_CRASH_N messages, says so, and waits to be killed.
func TestHelperCrashingConsumer(t *testing.T) {
	url := os.Getenv("SQLQUEUE_CRASH_DSN")
	if url == "" {
		t.Skip("the consumer process of TestCrashRedelivers")
	}
	n, _ := strconv.Atoi(os.Getenv("SQLQUEUE_CRASH_N"))
	db, _, err := sqldb.Open(url)
	if err != nil {
		t.Fatal(err)
	}
	src, err := sqlqueue.NewSource(db, sqlqueue.Config{Queue: "jobs", Prefetch: n, Visibility: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for range n {
		receive(t, src)
	}
	fmt.Println("claimed")
	time.Sleep(time.Minute)
	os.Exit(1) // not reached: the test kills the process
}

// TestSourcesNeverShareARow: two sources of one queue, each on a database
// pool of its own (as two processes), with four receivers each, never hold
// the same row at once, and between them receive every message once.
func TestSourcesNeverShareARow(t *testing.T) {
	eachDialect(t, func(t *testing.T, d sqldb.Dialect) {
		url := dsn(t, d)
		dbs := []*sql.DB{open(t, url), open(t, url)}
		if err := sqlqueue.Migrate(context.Background(), dbs[0], ""); err != nil {
			t.Fatal(err)
		}
		const n = 1000
		bodies := make([]string, n)
		for i := range bodies {
			bodies[i] = fmt.Sprintf("shared-%d", i)
		}
		publish(t, dbs[0], "shared", bodies...)
		var (
			mu     sync.Mutex
			holder = map[string]int{}
			seen   = map[string]int{}
			total  int
			errs   []error
			wg     sync.WaitGroup
		)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		for s, db := range dbs {
			src := newSource(t, db, sqlqueue.Config{Queue: "shared", Prefetch: 8})
			for range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						dl, err := src.Receive(ctx)
						if err != nil {
							if ctx.Err() == nil {
								mu.Lock()
								errs = append(errs, err)
								mu.Unlock()
								cancel()
							}
							return
						}
						b := string(dl.Message().Body)
						mu.Lock()
						if h, ok := holder[b]; ok {
							errs = append(errs, fmt.Errorf("%s is held by source %d and source %d at once", b, h, s))
						}
						holder[b] = s
						seen[b]++
						mu.Unlock()
						time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
						mu.Lock()
						delete(holder, b)
						mu.Unlock()
						if err := dl.Ack(context.Background()); err != nil {
							mu.Lock()
							errs = append(errs, fmt.Errorf("Ack(%s) = %w", b, err))
							mu.Unlock()
						}
						mu.Lock()
						total++
						if total == n {
							cancel()
						}
						mu.Unlock()
					}
				}()
			}
		}
		wg.Wait()
		for _, err := range errs {
			t.Error(err)
		}
		for _, b := range bodies {
			if seen[b] != 1 {
				t.Errorf("%s was received %d times; want once", b, seen[b])
			}
		}
		if total != n {
			t.Errorf("received %d messages; want %d", total, n)
		}
	})
}

// TestMigrateWrongSchema: a queue table that exists with a column of another
// type is refused by Migrate with an error naming the column.
func TestMigrateWrongSchema(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		if _, err := db.Exec("CREATE TABLE jobs (id INTEGER PRIMARY KEY, queue TEXT, msg_id TEXT, msg_key TEXT, headers TEXT, body TEXT, created_at BIGINT, available_at BIGINT, attempts INTEGER, lease_token TEXT, leased_until BIGINT)"); err != nil {
			t.Fatal(err)
		}
		err := sqlqueue.Migrate(context.Background(), db, "jobs")
		if !errors.Is(err, sqldb.ErrSchema) {
			t.Fatalf("Migrate of a table with msg_key TEXT = %v; want an error wrapping sqldb.ErrSchema", err)
		}
		if want := `column "msg_key"`; !contains(err.Error(), want) {
			t.Errorf("Migrate = %v; want it to name the column (%s)", err, want)
		}
		// Migrate is idempotent on a table it made.
		for range 2 {
			if err := sqlqueue.Migrate(context.Background(), db, "good"); err != nil {
				t.Fatalf("Migrate(good) = %v", err)
			}
		}
	})
}
