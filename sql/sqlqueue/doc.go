// Package sqlqueue is a durable queue in a database table: a broker adapter
// for PostgreSQL (through pgx) and SQLite (through modernc.org/sqlite, no
// cgo) with the semantics of the other adapters, for services that have a
// database and no message broker.
//
// A Publisher inserts messages as rows of a queue table; a Source of a
// queue (a value of the table's queue column) leases rows, hands them out,
// and deletes them when they are acked. Both work on a *sql.DB the
// application opened, usually with sqldb.Open, and share it with the
// application's own tables, so a message can be enqueued in the
// application's transaction (Publisher.PublishTx): it is queued if and only
// if the transaction commits.
//
//	db, _, err := sqldb.Open("sqlite:app.db") // or postgres://…
//	err = sqlqueue.Migrate(ctx, db, "")       // the tables, once per start
//	pub, err := sqlqueue.NewPublisher(db, sqlqueue.PublisherConfig{})
//	src, err := sqlqueue.NewSource(db, sqlqueue.Config{Queue: "emails"})
//	c, err := consumer.New(src, handler)
//
// # Lifecycle
//
// Migrate creates the queue table (DefaultTable unless named), its
// dead-letter table (the name plus "_dead"), its queues table (plus
// "_queues") and their indexes if they do not
// exist, and checks their columns; Schema returns the same DDL for teams that
// run their own migrations. NewSource and NewPublisher check their
// configuration and do no I/O. A Source starts its goroutines on its first
// Receive (one renews its leases; on PostgreSQL one LISTENs, on a connection
// of its own taken from the pool) and Close stops them; Close also gives back
// the rows the source still holds. The *sql.DB stays the application's: close
// it after the sources and publishers.
//
// # Acknowledgement
//
// Receive claims up to Config.Prefetch ready rows at once (oldest first),
// leasing them for Config.Visibility: the row's lease_token is the claim's,
// and leased_until is when the lease ends. The source renews the leases of
// what it holds every Visibility/3. Settling a delivery acts on its row only
// while the row still carries the delivery's token:
//
//   - Ack deletes the row.
//   - Requeue ends the lease; the row is ready again at once, in its place.
//   - Release (the runtime's give-back of a delivery no handler saw) ends
//     the lease and takes back the delivery count.
//   - RequeueAfter ends the lease and makes the row ready after the delay,
//     by the database's clock, without holding a prefetch slot meanwhile.
//   - DeadLetter moves the row into the dead-letter table, in one
//     transaction.
//
// A row whose lease ended (its source crashed, lost the database, or was
// closed with a context already done) is ready again and is delivered to any
// source. The delivery that held it is stale: settling it returns an error
// wrapping broker.ErrStaleDelivery and changes nothing, and its Lease context
// ends (cause broker.ErrStaleDelivery), which cancels its handler's context
// when it runs under the consumer runtime. A handler that runs longer than
// Visibility keeps its lease as long as the renewals reach the database.
//
// The Lease context ends before another source can take the row, whether
// renewals succeed or not: each delivery has a fence, the start of the last
// statement that leased or renewed its row (by the local monotonic clock,
// measured before the statement was sent) plus Visibility, less a tenth of
// Visibility; when the fence passes without a renewal having moved it (the
// database unreachable or slow), the delivery goes stale at once. The
// margin covers the handler's stopping and clocks running at slightly
// different rates, not a handler that ignores its context. Visibility is at
// least 1s.
//
// # Delivery count
//
// The claim that leases a row increments its attempts column, so
// Message.Attempt is durable: it counts every delivery, including those cut
// short by a crash or a lost lease, across processes and restarts, and the
// runtime's delivery budget holds. A row claimed into a source's prefetch
// buffer and never handed out is given back uncounted by Close and Pause;
// one whose source crashed before handing it out counts a delivery no
// handler saw.
//
// # Dead letters
//
// DeadLetter deletes the row and inserts it into the dead-letter table with
// the reason in its headers (broker.Reason.Header over the headers it was
// published with), in one transaction: a crash leaves it in one table or the
// other, never both, never neither. The dead-letter table keeps the queue
// name of every row, so one dead-letter table serves every queue of a queue
// table.
//
// Source.DeadLetters (or NewDeadLetters, without a source) lists, counts,
// redrives and purges the dead letters of a queue (broker.DeadLetters). A
// redrive moves a dead letter back into the queue table in one transaction,
// with a fresh delivery count. It writes only to a queue that is registered
// in the queues table (QueuesTable): a Source registers its queue on its
// first claim, or with DeclareTopology. A dead letter's ID is its row id in
// the dead-letter table.
//
// # Concurrency
//
// Sources, deliveries and publishers are safe for concurrent use. Several
// sources of one queue, in one process or many, share its rows: on
// PostgreSQL a claim locks the rows it takes with FOR UPDATE SKIP LOCKED, so
// concurrent claims take different rows without waiting for each other; on
// SQLite a claim is one UPDATE statement and the database has one writer at a
// time (sqldb.Open gives the pool a single connection). Two sources never
// hold one row at once, except when a lease ended and another source claimed
// the row, in which case the first one's delivery is stale (see
// Acknowledgement).
//
// A source wakes when a message is published: on PostgreSQL through the
// NOTIFY that Publish and PublishTx send (delivered at commit), and in one
// process through the publisher itself; otherwise it polls every
// Config.PollInterval, which also bounds how late it sees a lease that ended
// or a RequeueAfter delay that passed in another process.
//
// Every claim, settlement and renewal is a statement of its own; on
// PostgreSQL each may need a connection from the pool at once. database/sql
// keeps only 2 idle connections by default, so give the pool room for the
// consumer's concurrency (db.SetMaxIdleConns), or most settlements open a
// new connection. On SQLite, a handler that uses the database must not hold
// a transaction open while it waits for something that needs the pool's one
// connection.
//
// # Errors
//
// Constructors return errors wrapping broker.ErrInvalidConfig; Migrate one
// wrapping sqldb.ErrSchema, naming the column, when a table exists with
// another shape. While the database cannot be reached, Receive keeps trying,
// blocked, and Status reports the error; another database error is returned
// by Receive, marked broker.Fatal when no retry can fix it (a missing table or
// column, a privilege, the *sql.DB closed), naming the table. Close returns
// an error when it could not give every row back (its ctx ended, a claim was
// still under way, or the database refused). A settlement that fails for want of the
// database returns the error and can be retried; one whose row is not the
// delivery's any more returns an error wrapping broker.ErrStaleDelivery; a
// second settlement of one delivery, broker.ErrAlreadySettled. Publish
// returns an error wrapping broker.ErrPublisherClosed after Close, and ctx's
// error when ctx ends first, in which case the messages were not written
// unless the commit was already under way.
package sqlqueue
