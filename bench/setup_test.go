package bench

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/queuekit/queuekit/broker/rabbitmq"
	"github.com/queuekit/queuekit/sql/sqldb"
)

// TestMain checks for leaked goroutines, then deletes the RabbitMQ vhost the
// benchmarks created (after the check: deleting it would close a leaked
// connection and hide it) and prints the skips in one line.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		if err := rabbit.teardown(); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			code = 1
		}
		skips.print()
		os.Exit(code)
	}))
}

// unavailable skips tb because a server is unreachable, or fails it under
// QUEUEKIT_REQUIRE_BROKERS=1.
func unavailable(tb testing.TB, why string) {
	tb.Helper()
	if os.Getenv("QUEUEKIT_REQUIRE_BROKERS") == "1" {
		tb.Fatal(why + " (QUEUEKIT_REQUIRE_BROKERS=1)")
	}
	skips.add(why)
	tb.Skip(why)
}

// skips counts skips by reason: go test shows them only with -v.
var skips skipCounter

type skipCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (s *skipCounter) add(why string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n == nil {
		s.n = map[string]int{}
	}
	s.n[why]++
}

func (s *skipCounter) print() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.n) == 0 {
		return
	}
	var parts []string
	for why, n := range s.n {
		parts = append(parts, fmt.Sprintf("%d: %s", n, why))
	}
	sort.Strings(parts)
	fmt.Fprintln(os.Stderr, "bench: skipped:", strings.Join(parts, "; "))
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// PostgreSQL

const defaultPostgresURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

func postgresServerURL() string {
	if u := os.Getenv("QUEUEKIT_POSTGRES_URL"); u != "" {
		return u
	}
	return defaultPostgresURL
}

// pgAdmin opens and pings the server's maintenance database.
func pgAdmin(ctx context.Context) (*sql.DB, error) {
	db, _, err := sqldb.Open(postgresServerURL())
	if err != nil {
		return nil, err
	}
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

var (
	pgOnce sync.Once
	pgErr  error
)

// openPostgres returns a fresh database queuekit_test_<random> on the
// server, closed and dropped WITH (FORCE) when tb ends.
func openPostgres(tb testing.TB) *sql.DB {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pgOnce.Do(func() {
		db, err := pgAdmin(ctx)
		if err == nil {
			db.Close()
		}
		pgErr = err
	})
	if pgErr != nil {
		unavailable(tb, fmt.Sprintf("PostgreSQL at %s unreachable (set QUEUEKIT_POSTGRES_URL)", sqldb.Redact(postgresServerURL())))
	}
	admin, err := pgAdmin(ctx)
	if err != nil {
		tb.Fatalf("connect to %s: %v", sqldb.Redact(postgresServerURL()), err)
	}
	defer admin.Close()
	name := "queuekit_test_" + randomHex(6)
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		tb.Fatalf("CREATE DATABASE %s: %v", name, err)
	}
	tb.Cleanup(func() { // after the db.Close below (cleanups run last first)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		admin, err := pgAdmin(ctx)
		if err != nil {
			tb.Errorf("drop %s: %v", name, err)
			return
		}
		defer admin.Close()
		if _, err := admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			tb.Errorf("DROP DATABASE %s: %v", name, err)
		}
	})
	u, err := url.Parse(postgresServerURL())
	if err != nil {
		tb.Fatal("QUEUEKIT_POSTGRES_URL is not a URL")
	}
	u.Path = "/" + name
	db, d, err := sqldb.Open(u.String())
	if err != nil {
		tb.Fatal(err)
	}
	if d != sqldb.Postgres {
		tb.Fatalf("%s opened as %v", sqldb.Redact(u.String()), d)
	}
	// As sqlqueue's documentation says to: database/sql keeps 2 idle
	// connections by default, and with 8 workers settling at once most
	// acks would open a connection (a backend fork) of their own: about
	// 120 msg/s instead of 700 on this 2-core machine.
	db.SetMaxIdleConns(32)
	tb.Cleanup(func() { db.Close() })
	return db
}

// openSQLite returns a SQLite database in a file in tb's temporary
// directory, closed when tb ends.
func openSQLite(tb testing.TB) *sql.DB {
	tb.Helper()
	db, _, err := sqldb.Open("sqlite:" + filepath.Join(tb.TempDir(), "bench.db"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	return db
}

// RabbitMQ: one vhost of the benchmarks' own, created with rabbitmqctl on
// first use and deleted by TestMain, as broker/rabbitmq's tests do.

var rabbit rabbitServer

type rabbitServer struct {
	once    sync.Once
	base    string // QUEUEKIT_AMQP_URL or the default
	url     string // base in the vhost
	vhost   string
	created bool
	err     error // why the benchmarks cannot use it
}

const defaultAMQPURL = "amqp://guest:guest@127.0.0.1:5672/"

// amqpURL returns the URL of the benchmarks' vhost, skipping tb (or failing
// it under QUEUEKIT_REQUIRE_BROKERS=1) when there is none.
func amqpURL(tb testing.TB) string {
	tb.Helper()
	rabbit.setup()
	if rabbit.err != nil {
		unavailable(tb, rabbit.err.Error())
	}
	return rabbit.url
}

func (r *rabbitServer) setup() {
	r.once.Do(func() {
		r.base = os.Getenv("QUEUEKIT_AMQP_URL")
		if r.base == "" {
			r.base = defaultAMQPURL
		}
		c, err := amqp.Dial(r.base)
		if err != nil {
			r.err = fmt.Errorf("no RabbitMQ at %s: %s", rabbitmq.RedactURL(r.base), firstLine(rabbitmq.RedactError(err, r.base).Error()))
			return
		}
		_ = c.Close()
		u, err := url.Parse(r.base)
		if err != nil {
			r.err = fmt.Errorf("QUEUEKIT_AMQP_URL is not a URL")
			return
		}
		user := "guest"
		if u.User != nil && u.User.Username() != "" {
			user = u.User.Username()
		}
		vhost := "queuekit-test-" + randomHex(4)
		if _, err := rabbitmqctl("-q", "add_vhost", vhost); err != nil {
			r.err = fmt.Errorf("rabbitmqctl cannot create a vhost (run as root or with the broker's Erlang cookie): %s", firstLine(err.Error()))
			return
		}
		u.Path, u.RawPath = "/"+vhost, ""
		_, err = rabbitmqctl("-q", "set_permissions", "-p", vhost, user, ".*", ".*", ".*")
		if err == nil {
			// rabbitmqctl manages the local node, which need not be
			// the URL's: only where the vhost exists may we use it.
			c, derr := amqp.Dial(u.String())
			if derr != nil {
				err = fmt.Errorf("rabbitmqctl manages another broker than %s", rabbitmq.RedactURL(r.base))
			} else {
				_ = c.Close()
			}
		}
		if err != nil {
			_, _ = rabbitmqctl("-q", "delete_vhost", vhost)
			r.err = fmt.Errorf("%s", firstLine(err.Error()))
			return
		}
		r.url, r.vhost, r.created = u.String(), vhost, true
	})
}

func (r *rabbitServer) teardown() error {
	if !r.created {
		return nil
	}
	var err error
	for i := range 3 { // rabbitmqctl can time out on a loaded machine
		out, derr := rabbitmqctl("-q", "delete_vhost", r.vhost)
		if derr == nil || i > 0 && strings.Contains(out, "does not exist") {
			return nil
		}
		err = derr
	}
	return fmt.Errorf("vhost %s is left on the broker: %w", r.vhost, err)
}

func rabbitmqctl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "rabbitmqctl", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("rabbitmqctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return strings.TrimSpace(s[:i]) + " …"
	}
	return s
}

// brokerCPU returns a function reading the CPU time used so far by the
// local RabbitMQ node (every beam.smp process), or nil when the broker is
// not local or no such process is found.
func brokerCPU(amqpURL string) func() time.Duration {
	u, err := url.Parse(amqpURL)
	if err != nil {
		return nil
	}
	switch u.Hostname() {
	case "127.0.0.1", "localhost", "::1":
	default:
		return nil
	}
	var pids []string
	dirs, _ := filepath.Glob("/proc/[0-9]*/comm")
	for _, f := range dirs {
		if b, err := os.ReadFile(f); err == nil && strings.TrimSpace(string(b)) == "beam.smp" {
			pids = append(pids, filepath.Base(filepath.Dir(f)))
		}
	}
	if len(pids) == 0 {
		return nil
	}
	tick := clockTick()
	return func() time.Duration {
		var total time.Duration
		for _, pid := range pids {
			total += procCPU(pid, tick)
		}
		return total
	}
}

// procCPU returns utime+stime of a process, from /proc/<pid>/stat.
func procCPU(pid string, tick time.Duration) time.Duration {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command name may hold spaces
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state)
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64) // field 14
	st, _ := strconv.ParseInt(f[12], 10, 64) // field 15
	return time.Duration(ut+st) * tick
}

var (
	tickOnce sync.Once
	tick     time.Duration
)

// clockTick is the unit of /proc/<pid>/stat's times: 1/CLK_TCK seconds
// (100 on Linux unless getconf says otherwise).
func clockTick() time.Duration {
	tickOnce.Do(func() {
		hz := int64(100)
		if out, err := exec.Command("getconf", "CLK_TCK").Output(); err == nil {
			if v, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64); err == nil && v > 0 {
				hz = v
			}
		}
		tick = time.Second / time.Duration(hz)
	})
	return tick
}
