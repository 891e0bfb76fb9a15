package sqlqueue_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/brokertest"
	"github.com/queuekit/queuekit/sql/internal/sqltest"
	"github.com/queuekit/queuekit/sql/sqldb"
	"github.com/queuekit/queuekit/sql/sqlqueue"
)

// testVisibility is the lease of the sources of the tests: short, so that
// the rows a Close with a cancelled context leaves leased come back within
// the suite's timeout, and long enough for a renewal (every third of it)
// on a loaded machine.
const testVisibility = 2 * time.Second

// TestConformance runs the public conformance suite on PostgreSQL and on
// SQLite, with every capability declared but UnknownDestination: a queue is a
// value of the queue column, so every name is a destination. The fixture has
// no DeadLetterDestination: dead letters are rows of a table, not a queue a
// redrive could name, so the case that checks the refusal of it is skipped.
func TestConformance(t *testing.T) {
	sqltest.Each(t, func(t *testing.T, db *sql.DB, d sqldb.Dialect) {
		const table = "conformance_queue"
		ctx := context.Background()
		if err := sqlqueue.Migrate(ctx, db, table); err != nil {
			t.Fatalf("Migrate = %v", err)
		}
		var n atomic.Int64
		brokertest.Run(t, brokertest.Harness{
			Capabilities: brokertest.Capabilities{
				DeliveryCount:        true,
				DurableDeliveryCount: true,
				Prefetch:             true,
				DelayedRequeue:       true,
				StaleDeliveries:      true,
				PublishedID:          true,
			},
			Setup: func(t *testing.T) brokertest.Fixture {
				return fixture(t, db, table, fmt.Sprintf("conformance-%d", n.Add(1)))
			},
		})
	})
}

// fixture is a brokertest fixture on queue of table in db.
func fixture(t *testing.T, db *sql.DB, table, queue string) brokertest.Fixture {
	return brokertest.Fixture{
		Destination: queue,
		NewPublisher: func(t *testing.T) broker.Publisher {
			p, err := sqlqueue.NewPublisher(db, sqlqueue.PublisherConfig{Table: table})
			if err != nil {
				t.Fatalf("NewPublisher = %v", err)
			}
			return p
		},
		PublishDestination: queue,
		NewSource: func(t *testing.T, prefetch int) broker.Source {
			src, err := sqlqueue.NewSource(db, sqlqueue.Config{Table: table, Queue: queue, Prefetch: prefetch, Visibility: testVisibility})
			if err != nil {
				t.Fatalf("NewSource = %v", err)
			}
			return src
		},
		DeadLetters: func(ctx context.Context, t *testing.T, n int) []broker.Message {
			for {
				dead := deadLetters(t, db, table, queue)
				if len(dead) >= n {
					return dead
				}
				select {
				case <-ctx.Done():
					return dead
				case <-time.After(10 * time.Millisecond):
				}
			}
		},
		// The lease of every row the source holds runs out and the row
		// is taken by another claim, which gives it back: the source's
		// tokens match nothing any more.
		MakeStale: func(t *testing.T, src broker.Source) {
			q := fmt.Sprintf("UPDATE %s SET lease_token = NULL, leased_until = NULL WHERE queue = $1 AND lease_token IS NOT NULL", table)
			if _, err := db.Exec(q, queue); err != nil {
				t.Fatalf("MakeStale: %v", err)
			}
		},
	}
}

// deadLetters reads the dead letters of queue from the dead-letter table.
func deadLetters(t testing.TB, db *sql.DB, table, queue string) []broker.Message {
	t.Helper()
	rows, err := db.Query(fmt.Sprintf("SELECT msg_id, msg_key, headers, body FROM %s WHERE queue = $1 ORDER BY id", sqlqueue.DeadLetterTable(table)), queue)
	if err != nil {
		t.Fatalf("read dead letters: %v", err)
	}
	defer rows.Close()
	var out []broker.Message
	for rows.Next() {
		var (
			m broker.Message
			h string
		)
		if err := rows.Scan(&m.ID, &m.Key, &h, &m.Body); err != nil {
			t.Fatalf("read dead letters: %v", err)
		}
		if err := json.Unmarshal([]byte(h), &m.Header); err != nil {
			t.Fatalf("dead letter headers %q: %v", h, err)
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("read dead letters: %v", err)
	}
	return out
}
