// Package bench holds queuekit's cross-broker benchmarks: figures that
// compare one adapter with another, measured in the same run on the same
// machine, so that they can be quoted as ratios. It has no API; everything
// is in its tests. It is a module of its own so that the core module does
// not depend on RabbitMQ's client or on SQL drivers to hold them.
//
// # What it measures
//
// BenchmarkThroughput consumes b.N messages (128-byte body, one header),
// published beforehand outside the timer to a destination of their own,
// through consumer.New with 8 workers (consumer.WithConcurrency(8)), a
// source prefetch of 16 and a no-op handler, and stops the clock when the
// runtime has acked the b.N-th message (a consumer.WithObserver count). It
// reports msg/s and the benchmark process's CPU per message
// (client-cpu-µs/msg, getrusage user+system; for SQLite this includes the
// database, which runs in-process). Its sub-benchmarks:
//
//   - memory: the in-process broker (broker/memory), the baseline.
//   - sqlqueue-sqlite: the SQL queue (sql/sqlqueue) on a SQLite file in a
//     temporary directory.
//   - sqlqueue-postgres: the SQL queue on a fresh PostgreSQL database,
//     its pool keeping up to 32 idle connections (db.SetMaxIdleConns, as
//     sqlqueue's documentation says to do for concurrent consumers).
//   - rabbitmq: a durable classic queue with persistent messages (the
//     adapter's defaults) in a vhost of the benchmark's own. It also reports
//     the CPU the broker's beam.smp process used per message
//     (broker-cpu-µs/msg, from /proc/<pid>/stat) during the timed part, and
//     the broker's CPU while the benchmark was idle just before it
//     (broker-idle-cpu-ms/s): on a shared machine a broker busy with others'
//     work shows there.
//
// BenchmarkRelay measures the transactional outbox's relay (sql/outbox):
// b.N rows are written beforehand by outbox.Write, in transactions of 500;
// the timer runs from the relay's start (defaults: batches of 100, LISTEN on
// PostgreSQL) until the memory broker's queue holds all b.N messages. Its
// sub-benchmarks are direct (the same messages published straight to the
// memory broker's publisher, in batches of 100 like the relay's: the
// baseline), postgres and sqlite.
//
// Ratios between sub-benchmarks of one run are what the figures mean; the
// absolute msg/s depend on the machine and on what else it runs.
//
// # Running
//
//	go test -run '^$' -bench . -benchtime 20000x -count 3 ./bench/
//
// Use an explicit count of messages (-benchtime Nx): a time-based
// benchtime makes the benchmark framework grow b.N by probing, which means
// publishing the probes' messages again each time. go test without -bench
// runs only TestSmoke, each setup once with 10 messages.
//
// PostgreSQL is the server at QUEUEKIT_POSTGRES_URL (default
// postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable): each run
// creates a database queuekit_test_<random> and drops it WITH (FORCE)
// afterwards. RabbitMQ is the broker at QUEUEKIT_AMQP_URL (default
// amqp://guest:guest@127.0.0.1:5672/); the benchmark creates a vhost
// queuekit-test-<random> with rabbitmqctl, for the URL's user, and deletes
// it when the test binary ends. A sub-benchmark whose server is unreachable
// (or, for RabbitMQ, when rabbitmqctl cannot manage it) is skipped, or
// fails when QUEUEKIT_REQUIRE_BROKERS=1.
package bench
