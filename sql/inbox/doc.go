// Package inbox is an idempotent consumer on database/sql: middleware that
// records the idempotency key of every message it handled in a table, so
// that a duplicate delivery — which at-least-once brokers make after a lost
// ack, a reconnect or a producer's retry — is acknowledged without running
// its handler again. It works on PostgreSQL (pgx) and SQLite
// (modernc.org/sqlite); see package sqldb.
//
//	ib, err := inbox.New(db, inbox.Config{Scope: "billing"})
//	err = ib.Migrate(ctx)
//	h := consumer.Chain(middleware.Recover(), ib.Middleware())(
//		consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
//			_, err := inbox.Tx(ctx).ExecContext(ctx, `UPDATE accounts SET …`)
//			return err
//		}))
//
// # Keys
//
// A message's key is its Config.Header header (broker.HeaderIdempotencyKey,
// "idempotency-key", by default), which producers set — outbox.Write sets it
// on every message — or, when that is absent, what Config.Key derives from the
// message (a business id in the body). It is never Message.ID, which an
// adapter may make up per delivery. Keys are unique per Config.Scope: two
// consumers that each must handle a message once use two scopes. A key longer
// than MaxKeyBytes, one that is not valid UTF-8 or holds a NUL byte (binary
// keys, which PostgreSQL text cannot store), and one that starts with
// "sha256:" are stored as "sha256:" and their hex SHA-256: two different keys
// never share a row.
//
// # Lifecycle
//
// New validates the configuration and does no I/O. Migrate creates the table
// (or use Schema's DDL in your own migrations), checks its columns, and
// checks that the inbox can write it (a primary key on (scope, key), no
// other NOT NULL column without a default). The
// middleware then needs nothing more; an Inbox holds no goroutines or
// connections of its own. The Cleaner is a consumer.Runner that deletes old
// keys (see Retention); add it to the Supervisor beside the consumers.
//
// # Transactions
//
// In Transactional mode (the default) each delivery is one transaction:
//
//  1. BEGIN, and insert the key as done; if it is already there, the message
//     is a duplicate: ROLLBACK, and the middleware returns nil (ack) without
//     running the handler.
//  2. Run the handler with a context that carries the transaction: Tx(ctx).
//     The handler writes its effect through it.
//  3. The handler returned nil: COMMIT — the effect and the key are stored
//     together — and return nil (ack). A failed COMMIT returns its error, so
//     the message is delivered again; the redelivery then finds the key (the
//     commit happened after all: ack) or does not (it runs again).
//  4. The handler returned an error or panicked: ROLLBACK, which undoes the
//     effect and the key; the error (or the panic, for middleware.Recover or
//     the runtime) goes on unchanged, so retry.Permanent and retry.After keep
//     their meaning.
//
// So a handler's database effect happens exactly once, however often the
// message is delivered, as long as a duplicate comes within Retention. Two
// deliveries of one message at once are safe: on PostgreSQL the second insert
// of the key waits for the first transaction and then sees its key, or
// inserts it if the first rolled back; SQLite has one writer.
//
// Two Transactional inboxes on one database in one chain (two scopes, say a
// service's and an audit's) share the outer one's transaction: both keys
// commit with the effect, or none does. An inbox nested in one of the same
// *sql.DB, table and scope (one inbox twice in a chain, or two Inbox values
// alike) finds its key held by the enclosing one and just runs the handler:
// the enclosing inbox records the key. Tables are told apart by their name,
// in any case, and on SQLite without a "main." prefix. A table named
// another way still (on PostgreSQL "public.t" around "t") is safe too: the
// inner inbox inserts its key in the shared transaction, and when the row it
// meets was written by that very transaction, or one of its savepoints
// (txid_status of its xmin is 'in progress'), it runs the handler instead of
// taking the row for a duplicate; only a row committed by another delivery
// acks the message unrun.
//
// On PostgreSQL an inbox on another *sql.DB to the same database (same
// server, port and database name, same current_user and search_path, and
// its table the same relation in both sessions) counts as on the same
// database: it shares the enclosing transaction too, where its own would
// wait for the enclosing one's uncommitted key until the handler's context
// ended, and so would every redelivery. Pools of per-tenant schemas
// (another search_path) each keep a transaction of their own. Every
// enclosing Transactional inbox counts, not just the innermost: in a chain
// A, B (another database), A2 (A's database), A2 shares A's transaction.
// Telling the pools apart costs up to two queries per enclosing inbox and
// message, in that case only. On SQLite, nest inboxes on one *sql.DB: a
// second pool to the same file would wait for the enclosing transaction's
// write lock (SQLITE_BUSY after its busy timeout) on every delivery.
//
// The handler must use Tx(ctx) for every statement, never the *sql.DB: on
// SQLite, whose pool has one connection (sqldb.Open), a statement on the
// *sql.DB inside the handler waits for the handler's own transaction until its
// context ends;
// on PostgreSQL it would commit apart from the key. It must not commit or
// roll back the transaction itself. Effects outside the database (an HTTP
// call, a publish) are not undone by a rollback: write them to an outbox in
// the same transaction, or use Lease mode. The transaction lives as long as
// the handler, holding its locks; keep handlers short. The handler's context
// ends the transaction when it is cancelled (at the consumer's drain
// deadline): the message is then delivered again.
//
// # Lease mode
//
// Lease mode is for handlers whose effects are outside the database. It
// reserves the key before the handler runs and confirms it after:
//
//  1. Reserve: insert the key with a random token and a lease (LeaseTime), or
//     take over the row of an expired lease. A key already done: ack without
//     running. A key under another worker's live lease: see Busy.
//  2. Run the handler, with no transaction, while a goroutine renews the lease
//     every LeaseTime/3.
//  3. Success: mark the key done, if the reservation is still ours, and ack.
//     Failure or panic: delete the reservation, so the redelivery runs at once.
//
// A duplicate never runs while another worker holds a live lease: with Busy
// Wait (the default) it polls until that worker is done (then it is acked)
// or its lease ends (then it runs), for as long as its context allows; with
// Requeue it returns ErrBusy marked with retry.After for the rest of the lease,
// and the broker delivers it again then (this counts against the delivery
// budget). A worker that crashed leaves its reservation, which is free again
// when its lease ends, at most LeaseTime after its last renewal.
//
// Lease mode is at-least-once for the effect, not exactly-once: a crash after
// the effect and before the confirm runs the handler again once the lease
// ends. If the lease cannot be renewed for a whole LeaseTime (the database
// unreachable) or was taken over, the handler's context is cancelled with
// cause ErrLeaseLost and the middleware returns an error wrapping it; another
// worker may then run the message. Pick a LeaseTime well above the time the
// database may be unreachable, and make the external effect idempotent where
// it can be (pass the key on to the downstream service).
//
// Use one mode per scope: a Transactional-mode inbox takes a key that a
// Lease-mode worker has reserved, but not yet confirmed, for a done one.
//
// A Lease-mode inbox inside a Transactional one on the same *sql.DB
// (consumer.Chain(tx.Middleware(), lease.Middleware())) reserves nothing: it
// records its key as done in the enclosing transaction, as a Transactional
// inbox would. The row lock of that insert keeps duplicates out while the
// handler runs (on SQLite the one writer does), and the key commits with the
// enclosing key and the handler's database effect, or not at all: the
// external effect stays at-least-once. A reservation of its own would wait
// on SQLite for the enclosing transaction, which holds the pool's only
// connection. As said above, such a scope is then used in Transactional mode.
//
// The other way round, a handler that holds a transaction inside a Lease
// inbox (consumer.Chain(lease.Middleware(), tx.Middleware()), or a handler
// that begins one) keeps, on a pool of one connection as sqldb.Open gives
// SQLite, that connection from the renewer: a transaction that outlasts about
// two thirds of LeaseTime loses the lease, and the error (ErrLeaseLost) says
// that the pool's one connection was held. Put the Transactional inbox
// outside the Lease one.
//
// When renewals fail, the handler's context is cancelled with ErrLeaseLost
// LeaseTime-LeaseTime/3 after the last renewal that succeeded, so that it
// has about LeaseTime/3 to stop before another worker may take the key over
// (less on a machine too loaded to run the renewer on time). LeaseTime is at
// least MinLeaseTime (1s), well above a renewal's round trip.
//
// # Errors
//
// A message with no key — no header, and no Key function or one that returned
// "", an error or panicked — is not handled: the middleware returns ErrNoKey (with the
// Key function's error, if any) marked with retry.Permanent, so the runtime
// dead-letters it at once with that reason. Handling it could not be made
// idempotent, and redelivering it cannot give it a key.
//
// Database errors (begin, insert, commit, reserve) are returned wrapped, not
// permanent: the message is delivered again, within the consumer's delivery
// budget. The handler's own errors are returned unchanged. In Lease mode,
// ErrBusy and ErrLeaseLost are as above.
//
// # Retention
//
// Keys are kept for Config.Retention (7 days by default): a duplicate that
// arrives later is handled again, so pick it above the longest time a message
// can spend in the broker (including dead-letter redrives). Inbox.Clean
// deletes older keys, and Lease-mode reservations whose lease ended that
// long ago, in statements of CleanBatch rows, so it never locks many rows at
// once; Inbox.Cleaner runs it every interval under a consumer.Supervisor.
//
// # Concurrency
//
// An Inbox is safe for concurrent use, and one may wrap the handlers of many
// consumers at once; each delivery uses one connection of db's pool (two, in
// Lease mode, while the lease is renewed). On PostgreSQL, give the pool at
// least as many connections as the consumers have workers.
package inbox
