// Package outbox is a transactional outbox on database/sql: messages are
// written to a table inside the application's own transaction, and a relay
// publishes them through any broker.Publisher once that transaction
// committed. A service that stores an order and announces it can then not
// lose the announcement (the process dies after the commit) nor announce
// an order that was rolled back.
//
// It works on PostgreSQL (pgx's database/sql driver) and SQLite
// (modernc.org/sqlite); open the database with sqldb.Open.
//
// # Writing
//
// Migrate creates the table once (or run the DDL of Schema in your own
// migrations). Then, in the transaction that changes your data:
//
//	tx, err := db.BeginTx(ctx, nil)
//	…
//	_, err = tx.ExecContext(ctx, `INSERT INTO orders …`)
//	err = ob.Write(ctx, tx, "orders", msg) // or outbox.Write on the default table
//	err = tx.Commit()
//
// Write stores each message's Key, ID, headers and Body, and gives every
// message without one a random broker.HeaderIdempotencyKey header, so that
// consumers (package github.com/queuekit/queuekit/sql/inbox) can recognise
// a message the relay published twice.
//
// # Relaying
//
// Outbox.Relay returns a Relay, a consumer.Runner: add it to the
// consumer.Supervisor that runs your consumers, which restarts it, reports
// its State in Health, and stops it with the rest. Each round, the relay
// takes up to Batch due rows (at most MaxBatchBytes of them, default
// 16 MiB, but at least one row) in id order, publishes them with one
// Publish call per destination, and marks them sent (sets sent_at) only
// after Publish returned nil. When a call with several messages fails, the
// relay publishes them again one at a time, so that a message the broker
// rejects fails alone. A failed message's row stays unsent, with attempts
// and last_error updated, and waits before its next attempt (retry_at:
// 100ms, doubling with each attempt, up to 30s); meanwhile the relay reads
// past it and publishes the rows behind it, so that a failing destination
// or message does not hold up the others. The relay never gives up on a
// row: a message that can never be published blocks its key (see Order)
// until an operator deletes or fixes its row, and last_error says why.
//
// The Publisher must return when the context Publish is given is done: the
// relay bounds each call with RelayConfig.PublishTimeout and cancels it
// when Run's context is done, and a Publish that ignores its context holds
// Run until it returns.
//
// Sent rows are deleted after RelayConfig.Retention (default 1h), at most
// 1,000 per statement; a negative Retention deletes each row as soon as it
// was published.
//
// # Delivery guarantee
//
// At least once, never lost: a row is marked sent in the same database
// after the broker confirmed it, so a crash anywhere (in the application
// before its commit, in the relay before or during Publish, between
// Publish and the mark) leaves the row unsent, and a relay publishes it
// again. The one case that publishes twice is a crash, a lost connection or
// a failed confirm between a Publish the broker took and the mark:
// consumers deduplicate on the idempotency key. Under normal operation,
// several relays never publish a row twice.
//
// # Order
//
// Messages with the same Key are published in the order of their rows
// (their ids), per destination, also with several relays running: a relay
// leaves a key's rows alone while another relay holds an earlier unsent
// row of that key, and after a failed Publish it leaves the later rows of
// the failed messages' keys for the next round. Row ids are the order in
// which writers got them, which is the order of their commits when the
// writes of one key are serialised (as they are when each transaction also
// updates the entity the key names); for writes of one key racing in
// concurrent transactions, no order is defined. Messages without a Key are
// published in id order by each relay, with no order between relays.
//
// # Several relays
//
// On PostgreSQL, any number of relays (in one process or many) share the
// work: each round runs in a transaction that holds its rows locked while
// it publishes them (SELECT … FOR UPDATE SKIP LOCKED); the others skip
// those rows. A relay that dies releases its rows with its connection, and
// another publishes them. Each relay keeps one connection of its *sql.DB
// for LISTEN, plus one per round in progress.
//
// On SQLite, which has a single writer and no row locks, one relay at a
// time works: it holds a lease, a row in the table <table>_relay renewed
// every 5 seconds. Other relays on the same file stand by (Stats.Standby)
// and take over within a second when the holder stops, or when it died with
// its process on the same machine (Linux: the lease names the process);
// otherwise 15 seconds after it died. The relay reads its batch and publishes outside any transaction
// (a transaction would hold SQLite's only connection and its write lock
// against the application during the publish), then marks it in a short
// transaction.
//
// # Waking up
//
// On PostgreSQL, Migrate installs a trigger that runs pg_notify on the
// channel named after the table (lower case) once per INSERT statement, and
// each relay LISTENs on it, so a committed Write is published within
// milliseconds. Polling (PollInterval, default 1s while listening) covers
// lost notifications; while the LISTEN connection is lost, the relay polls
// every 100ms and listens again with backoff. Set DisableListen behind a
// pooler in transaction mode (PgBouncer), where LISTEN does not work. On
// SQLite the relay polls every 100ms.
//
// # Errors and health
//
// Run returns nil when its context is done, and an error only when the
// relay is already running. A database that is down, at start or later, or
// a table that does not exist, makes Run retry with backoff; State then
// reports consumer.StateReconnecting (not ready), and Stats.LastError says
// why. While every Publish fails, State reports consumer.StateStalled.
// Errors never contain the database password. Stats gives the counters for
// metrics: messages published and failed, the rows pending and the age of
// the oldest (LagSeconds).
//
// # Table
//
// The table (default "queuekit_outbox", see Config.Table) has the columns
// id, dest, msg_key, msg_id, headers (JSON text), body, created_at, sent_at
// (NULL until published), attempts, last_error and retry_at (when a failed
// row is due again). On SQLite, created_at
// and sent_at are unix milliseconds. Migrate is idempotent and checks an
// existing table's columns, naming a missing or mistyped one in an error
// wrapping sqldb.ErrSchema.
package outbox
