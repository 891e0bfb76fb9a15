package sqlqueue_test

import (
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
