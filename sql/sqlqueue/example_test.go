package sqlqueue_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/sql/sqldb"
	"github.com/queuekit/queuekit/sql/sqlqueue"
)

// A durable queue in a SQLite file: what is published survives a restart of
// the process, and a consumer takes it from there. On PostgreSQL only the
// DSN changes.
func Example() {
	dir, err := os.MkdirTemp("", "sqlqueue-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	db, _, err := sqldb.Open("sqlite:" + filepath.Join(dir, "app.db"))
	if err != nil {
		panic(err)
	}
	defer db.Close()
	ctx := context.Background()
	if err := sqlqueue.Migrate(ctx, db, ""); err != nil {
		panic(err)
	}

	pub, err := sqlqueue.NewPublisher(db, sqlqueue.PublisherConfig{})
	if err != nil {
		panic(err)
	}
	defer pub.Close(ctx)
	type Email struct {
		To string `json:"to"`
	}
	for _, to := range []string{"ada@example.com", "grace@example.com"} {
		if err := broker.PublishJSON(ctx, pub, "emails", nil, Email{To: to}); err != nil {
			panic(err)
		}
	}

	src, err := sqlqueue.NewSource(db, sqlqueue.Config{Queue: "emails"})
	if err != nil {
		panic(err)
	}
	if bl, err := src.Backlog(ctx); err == nil {
		fmt.Println("waiting:", bl.Messages)
	}
	runCtx, stop := context.WithCancel(ctx)
	h := consumer.JSON(func(ctx context.Context, m *broker.Message, e Email) error {
		fmt.Printf("send to %s (attempt %d)\n", e.To, m.Attempt)
		if e.To == "grace@example.com" {
			stop() // the last one; it is still acked
		}
		return nil
	})
	c, err := consumer.New(src, h, consumer.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		panic(err)
	}
	if err := c.Run(runCtx); err != nil { // closes src when it returns
		panic(err)
	}
	var left int
	if err := db.QueryRowContext(ctx, "SELECT count(*) FROM "+sqlqueue.DefaultTable).Scan(&left); err != nil {
		panic(err)
	}
	fmt.Println("rows left:", left)
	// Output:
	// waiting: 2
	// send to ada@example.com (attempt 1)
	// send to grace@example.com (attempt 1)
	// rows left: 0
}

// PublishTx enqueues a message inside the application's own transaction:
// the order and its message are written together, or neither is.
func ExamplePublisher_PublishTx() {
	dir, err := os.MkdirTemp("", "sqlqueue-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	db, _, err := sqldb.Open("sqlite:" + filepath.Join(dir, "app.db"))
	if err != nil {
		panic(err)
	}
	defer db.Close()
	ctx := context.Background()
	if err := sqlqueue.Migrate(ctx, db, ""); err != nil {
		panic(err)
	}
	if _, err := db.ExecContext(ctx, "CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL)"); err != nil {
		panic(err)
	}
	pub, err := sqlqueue.NewPublisher(db, sqlqueue.PublisherConfig{})
	if err != nil {
		panic(err)
	}
	defer pub.Close(ctx)

	place := func(item string, fail bool) error {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer tx.Rollback()
		if _, err := tx.ExecContext(ctx, "INSERT INTO orders (item) VALUES ($1)", item); err != nil {
			return err
		}
		m, err := broker.NewJSON(map[string]string{"item": item})
		if err != nil {
			return err
		}
		if err := pub.PublishTx(ctx, tx, "orders", m); err != nil {
			return err
		}
		if fail {
			return fmt.Errorf("payment declined for %s", item)
		}
		return tx.Commit()
	}
	fmt.Println(place("book", false))
	fmt.Println(place("lamp", true))

	var orders, queued int
	db.QueryRowContext(ctx, "SELECT count(*) FROM orders").Scan(&orders)
	db.QueryRowContext(ctx, "SELECT count(*) FROM "+sqlqueue.DefaultTable).Scan(&queued)
	fmt.Printf("%d order, %d message\n", orders, queued)
	// Output:
	// <nil>
	// payment declined for lamp
	// 1 order, 1 message
}
