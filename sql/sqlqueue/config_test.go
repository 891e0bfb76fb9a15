package sqlqueue_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/sql/internal/sqltest"
	"github.com/queuekit/queuekit/sql/sqldb"
	"github.com/queuekit/queuekit/sql/sqlqueue"
)

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// TestInvalidConfig: the constructors refuse invalid configuration with an
// error wrapping broker.ErrInvalidConfig, before any I/O.
func TestInvalidConfig(t *testing.T) {
	db := sqltest.SQLite(t)
	for _, c := range []struct {
		name string
		cfg  sqlqueue.Config
	}{
		{"no queue", sqlqueue.Config{}},
		{"a queue name with a NUL", sqlqueue.Config{Queue: "a\x00b"}},
		{"a queue name that is not UTF-8", sqlqueue.Config{Queue: "\xff"}},
		{"a queue name of 256 bytes", sqlqueue.Config{Queue: strings.Repeat("q", 256)}},
		{"a table name with a space", sqlqueue.Config{Queue: "q", Table: "my table"}},
		{"a table name whose dead-letter table is too long", sqlqueue.Config{Queue: "q", Table: strings.Repeat("t", 60)}},
		{"a table name with SQL in it", sqlqueue.Config{Queue: "q", Table: "t; DROP TABLE x"}},
		{"a negative prefetch", sqlqueue.Config{Queue: "q", Prefetch: -1}},
		{"a negative visibility", sqlqueue.Config{Queue: "q", Visibility: -time.Second}},
		{"a visibility of 1ms", sqlqueue.Config{Queue: "q", Visibility: time.Millisecond}},
		{"a negative poll interval", sqlqueue.Config{Queue: "q", PollInterval: -time.Second}},
	} {
		if _, err := sqlqueue.NewSource(db, c.cfg); !errors.Is(err, broker.ErrInvalidConfig) {
			t.Errorf("NewSource with %s = %v; want an error wrapping broker.ErrInvalidConfig", c.name, err)
		}
	}
	if _, err := sqlqueue.NewSource(nil, sqlqueue.Config{Queue: "q"}); !errors.Is(err, broker.ErrInvalidConfig) {
		t.Errorf("NewSource(nil) = %v; want an error wrapping broker.ErrInvalidConfig", err)
	}
	if _, err := sqlqueue.NewPublisher(db, sqlqueue.PublisherConfig{Table: "1table"}); !errors.Is(err, broker.ErrInvalidConfig) {
		t.Errorf("NewPublisher with table 1table = %v; want an error wrapping broker.ErrInvalidConfig", err)
	}
	if _, err := sqlqueue.Schema(sqldb.Dialect(0), "t"); !errors.Is(err, broker.ErrInvalidConfig) {
		t.Errorf("Schema of an unknown dialect = %v; want an error wrapping broker.ErrInvalidConfig", err)
	}
	if _, err := sqlqueue.NewDeadLetters(db, "", ""); !errors.Is(err, broker.ErrInvalidConfig) {
		t.Errorf("NewDeadLetters without a queue = %v; want an error wrapping broker.ErrInvalidConfig", err)
	}
	if _, err := sqlqueue.NewDeadLetters(db, "bad table", "q"); !errors.Is(err, broker.ErrInvalidConfig) {
		t.Errorf("NewDeadLetters with table %q = %v; want an error wrapping broker.ErrInvalidConfig", "bad table", err)
	}
	p, err := sqlqueue.NewPublisher(db, sqlqueue.PublisherConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for _, dest := range []string{"", "a\x00b"} {
		if err := p.Publish(t.Context(), dest, &broker.Message{}); !errors.Is(err, broker.ErrInvalidConfig) {
			t.Errorf("Publish to %q = %v; want an error wrapping broker.ErrInvalidConfig", dest, err)
		}
	}
	if err := p.Publish(t.Context(), "q", nil); !errors.Is(err, broker.ErrInvalidConfig) {
		t.Errorf("Publish of a nil message = %v; want an error wrapping broker.ErrInvalidConfig", err)
	}
}

// TestDatabaseDown: a source whose database is down keeps Receive blocked,
// retrying, until its context ends; Status says why, without the password
// of the DSN; once closed, Receive returns ErrSourceClosed.
func TestDatabaseDown(t *testing.T) {
	db, _, err := sqldb.Open("postgres://queuekit:s3cret@127.0.0.1:1/nowhere?connect_timeout=1")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	src, err := sqlqueue.NewSource(db, sqlqueue.Config{Queue: "q"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	if _, err := src.Receive(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Receive with the database down = %v; want it to keep trying until its context ends (context.DeadlineExceeded)", err)
	}
	st := src.Status()
	t.Logf("Status with the database down: %+v", st)
	if st.Connected || st.Err == nil {
		t.Errorf("Status with the database down = %+v; want not connected, with the error", st)
	} else if strings.Contains(st.Err.Error(), "s3cret") {
		t.Errorf("Status().Err = %v; it must not contain the password", st.Err)
	}
	if err := src.Close(context.Background()); err != nil {
		t.Errorf("Close = %v; want nil (nothing to give back)", err)
	}
	if _, err := src.Receive(context.Background()); !errors.Is(err, broker.ErrSourceClosed) {
		t.Errorf("Receive after Close = %v; want broker.ErrSourceClosed", err)
	}
}
