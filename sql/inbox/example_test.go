package inbox_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/sql/inbox"
	"github.com/queuekit/queuekit/sql/sqldb"
)

// A payment message delivered twice credits the account once: the handler
// writes through the inbox's transaction, which also records the message's
// idempotency key, and the duplicate is acked without running it.
func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "inbox-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	db, _, err := sqldb.Open(filepath.Join(dir, "app.db"))
	if err != nil {
		panic(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `CREATE TABLE accounts (id TEXT PRIMARY KEY, balance INTEGER NOT NULL)`); err != nil {
		panic(err)
	}
	if _, err := db.ExecContext(ctx, `INSERT INTO accounts VALUES ('alice', 0)`); err != nil {
		panic(err)
	}

	ib, err := inbox.New(db, inbox.Config{Scope: "payments"})
	if err != nil {
		panic(err)
	}
	if err := ib.Migrate(ctx); err != nil {
		panic(err)
	}

	// The producer sets the key; a retry of its publish sends the same one.
	b := memory.NewBroker()
	defer b.Close()
	payment := &broker.Message{Body: []byte("10"), Header: map[string]string{broker.HeaderIdempotencyKey: "payment-42"}}
	for range 2 {
		if err := b.Publish(ctx, "payments", payment); err != nil {
			panic(err)
		}
	}

	credit := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		fmt.Printf("crediting %s for %s\n", m.Body, m.Header[broker.HeaderIdempotencyKey])
		_, err := inbox.Tx(ctx).ExecContext(ctx, `UPDATE accounts SET balance = balance + CAST($1 AS INTEGER) WHERE id = 'alice'`, string(m.Body))
		return err
	})
	src, err := b.Source("payments", memory.SourceConfig{Prefetch: 1})
	if err != nil {
		panic(err)
	}
	c, err := consumer.New(src, consumer.Chain(middleware.Recover(), ib.Middleware())(credit),
		consumer.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		panic(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx) }()
	for b.Stats("payments").Acked < 2 {
		time.Sleep(time.Millisecond)
	}
	stop()
	if err := <-done; err != nil {
		panic(err)
	}

	var balance int
	if err := db.QueryRowContext(ctx, `SELECT balance FROM accounts WHERE id = 'alice'`).Scan(&balance); err != nil {
		panic(err)
	}
	fmt.Println("acked:", b.Stats("payments").Acked, "balance:", balance)
	// Output:
	// crediting 10 for payment-42
	// acked: 2 balance: 10
}
