// Command queuekit is the operator's tool for queuekit's dead letters: see
// why messages failed, send them back to their queue or topic for another
// try (redrive), or delete them (purge), on RabbitMQ and Kafka alike.
//
// Install it with
//
//	go install github.com/queuekit/queuekit/cmd/queuekit@latest
//
// # Usage
//
//	queuekit dlq list    [target] [filters] [--limit N] [--cursor C] [--json]
//	queuekit dlq show    [target] [--raw] [--json] ID
//	queuekit dlq count   [target] [filters] [--json]
//	queuekit dlq redrive [target] selection [--dry-run] [--max-redrives N] [--to DEST] [--json]
//	queuekit dlq purge   [target] selection [--dry-run] [--json]
//	queuekit version
//	queuekit help
//
// The target is one broker's dead letters of one source:
//
//   - RabbitMQ: --amqp-url URL (or the environment variable AMQP_URL) and
//     --queue NAME, the work queue; its dead letters are in --dlq, by default
//     NAME.dlq (the queue rabbitmq.Topology declares).
//   - Kafka: --kafka-brokers host:port,... (or KAFKA_BROKERS) and --topic
//     NAME, the source topic; its dead letters are in --dlt, by default
//     NAME.dlt.
//
// --timeout (default 30s) bounds the whole command, connecting included, so
// that a wrong host does not hang it.
//
// Filters select dead letters and combine with AND: --id (repeatable, or a
// comma-separated list), --reason TEXT (the error text contains it, ignoring
// case), --source NAME (the queue or topic it was dead-lettered from),
// --older-than and --newer-than (durations such as 30m or 24h). redrive and
// purge need a selection: filters, or --all for every dead letter, so that a
// forgotten flag does not empty a queue; --max N stops after N dead letters,
// oldest first. --dry-run says what would be done and changes nothing.
//
// redrive sends each selected dead letter back to the queue or topic it
// came from (or to --to DEST) with its attempt count reset; the copy is
// confirmed by the broker before the dead letter is removed, so a crash in
// between may duplicate a message, never lose it. A dead letter redriven
// --max-redrives times already (default 3) is skipped, so that a poison
// message cannot loop for ever.
//
// # Output
//
// By default the commands print aligned tables for people: list shows each
// dead letter's id, age, attempts, redrive count, source, the error (cut to
// a width) and the start of its body. show prints one dead letter whole:
// its reason, headers and body. --json prints the broker package's types
// instead (broker.DeadLetterPage, broker.DeadLetter, broker.DeadLetterResult,
// {"count": N}), for scripts.
//
// Text taken from messages (ids, errors, headers, bodies) is escaped before
// it reaches the terminal: control characters, bidirectional overrides and
// bytes that are not UTF-8 are printed as Go escapes (\x1b, \n, \u202e), a
// backslash as \\. show --raw writes the body as it is. Errors quote names
// as the adapters do ("work\x1b…"), escaped once. Passwords in URLs are
// never printed: errors are passed through rabbitmq.RedactError.
//
// --id, show's ID and --cursor take an id or a cursor as the tables print
// it, escapes included, so that every id can be given back exactly, even
// one that is not UTF-8; a backslash that starts no escape is refused (exit
// 2), and a comma in an id is written \x2c (--id splits on commas).
//
// --json escapes control and format characters (bidirectional overrides,
// zero-width characters, line separators) as \uXXXX, JSON's own escapes, so
// the decoded data is unchanged. JSON strings cannot hold bytes that are not
// UTF-8: encoding/json writes them as U+FFFD, so for such an id use the
// table's escaped form.
//
// # Exit codes
//
//	0  done: every selected dead letter was listed, redriven or purged
//	1  partly done: some named dead letters are missing (or show found none,
//	   or the dead letter a --cursor names is gone),
//	   or some selected ones were skipped (redrive limit, no source); the
//	   output says which
//	2  usage error: bad flags or arguments, an empty selection, bad configuration
//	3  cannot connect: the broker cannot be reached or refused the credentials
//	   or the vhost
//	4  the operation failed: the broker refused it (e.g. no such queue), it
//	   did not finish within --timeout (also when a host accepted the
//	   connection but never answered), or it was interrupted; what was done
//	   before is reported
//
// # Example
//
// A message fails, the operator sees why, fixes the cause, then sends it
// back:
//
//	$ export AMQP_URL=amqp://ops:secret@rabbit:5672/
//	$ queuekit dlq list --queue orders
//	$ queuekit dlq show --queue orders 'ID'
//	$ queuekit dlq redrive --queue orders --reason "connection refused" --dry-run
//	$ queuekit dlq redrive --queue orders --reason "connection refused"
package main
