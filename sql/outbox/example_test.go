package outbox_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/sql/outbox"
	"github.com/queuekit/queuekit/sql/sqldb"
)

// An order and the message announcing it are written in one transaction;
// the relay, run by a Supervisor, publishes the message once the
// transaction committed. On SQLite here; the same code runs on PostgreSQL
// with a postgres:// URL.
func Example() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir, err := os.MkdirTemp("", "outbox-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)

	db, _, err := sqldb.Open("sqlite:" + filepath.Join(dir, "shop.db"))
	if err != nil {
		panic(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT)`); err != nil {
		panic(err)
	}
	ob, err := outbox.New(db, outbox.Config{})
	if err != nil {
		panic(err)
	}
	if err := ob.Migrate(ctx); err != nil {
		panic(err)
	}

	// The application's transaction: the order row and its message commit
	// together, or neither does.
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		panic(err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO orders (id, item) VALUES (1, 'tea')`); err != nil {
		panic(err)
	}
	m, err := broker.NewJSON(map[string]any{"order": 1, "item": "tea"})
	if err != nil {
		panic(err)
	}
	m.Key = []byte("order-1")
	if err := ob.Write(ctx, tx, "orders", m); err != nil {
		panic(err)
	}
	if err := tx.Commit(); err != nil {
		panic(err)
	}

	// The relay publishes through any broker.Publisher: here the memory
	// broker's.
	b := memory.NewBroker()
	relay, err := ob.Relay(b.Publisher(), outbox.RelayConfig{})
	if err != nil {
		panic(err)
	}
	var sup consumer.Supervisor
	if err := sup.Add("outbox", relay); err != nil {
		panic(err)
	}
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()

	src, err := b.Source("orders", memory.SourceConfig{})
	if err != nil {
		panic(err)
	}
	d, err := src.Receive(ctx)
	if err != nil {
		panic(err)
	}
	got := d.Message()
	fmt.Printf("%s %s\n", got.Key, got.Body)
	fmt.Println("idempotency key set:", len(got.Header[broker.HeaderIdempotencyKey]) == 32)
	if err := d.Ack(ctx); err != nil {
		panic(err)
	}

	cancel()
	if err := <-done; err != nil {
		panic(err)
	}
	fmt.Println("published by the relay:", relay.Stats().Published)
	// Output:
	// order-1 {"item":"tea","order":1}
	// idempotency key set: true
	// published by the relay: 1
}
