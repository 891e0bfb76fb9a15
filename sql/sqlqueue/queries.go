package sqlqueue

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/queuekit/queuekit/sql/sqldb"
)

// queries are the statements of one queue table in one dialect, built once
// per Source or Publisher. Times are microseconds since the Unix epoch by the
// database's clock (now), so that the leases of processes on several hosts
// compare on one clock; durations are parameters in microseconds. Parameters
// appear in ascending order, each once: SQLite numbers "$N" parameters in the
// order they first appear.
type queries struct {
	d     sqldb.Dialect
	table string
	dead  string
	now   string

	claim        string // $1 token, $2 visibility µs, $3 queue, $4 limit
	ack          string // $1 id, $2 token
	requeue      string // $1 id, $2 token
	release      string // $1 id, $2 token
	requeueAfter string // $1 delay µs, $2 id, $3 token
	renew        string // $1 visibility µs, $2 token, $3 JSON array of ids → ids
	takeDead     string // $1 id, $2 token → row
	insertDead   string // $1 queue, $2 msg_id, $3 key, $4 headers, $5 body, $6 created_at, $7 attempts
	backlog      string // $1 queue
	register     string // $1 queue
	registered   string // $1 queue
	deadScanMeta string // $1 queue, $2 after id, $3 limit → rows without their bodies
	deadBody     string // $1 id, $2 queue, $3 n → the first n bytes of the body, its length
	deadTake     string // $1 id, $2 queue → row
	deadDelete   string // $1 id, $2 queue
}

// nowExpr is the database's clock in microseconds since the Unix epoch.
func nowExpr(d sqldb.Dialect) string {
	if d == sqldb.Postgres {
		// now() is the start of the transaction: one value per statement
		// here, and usable as an index bound (clock_timestamp() is not).
		return "(floor(extract(epoch from now()) * 1000000))::bigint"
	}
	return "CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)"
}

func newQueries(d sqldb.Dialect, table string) *queries {
	q := &queries{d: d, table: table, dead: DeadLetterTable(table), now: nowExpr(d)}
	t, now := table, q.now
	const row = "id, msg_id, msg_key, headers, body, created_at, attempts"
	ready := fmt.Sprintf("queue = $3 AND available_at <= %s AND (leased_until IS NULL OR leased_until < %s)", now, now)
	if d == sqldb.Postgres {
		// The rows are locked by the materialized CTE, once; rows another
		// claim holds are skipped, and a row another claim updated
		// before we locked it is rechecked against the WHERE clause
		// (READ COMMITTED), so that no two claims take one row.
		q.claim = fmt.Sprintf(`WITH c AS MATERIALIZED (SELECT id FROM %s WHERE %s ORDER BY available_at, id LIMIT $4 FOR UPDATE SKIP LOCKED)
UPDATE %s AS t SET attempts = t.attempts + 1, lease_token = $1, leased_until = %s + $2 FROM c WHERE t.id = c.id
RETURNING t.id, t.msg_id, t.msg_key, t.headers, t.body, t.created_at, t.attempts, t.available_at`, t, ready, t, now)
	} else {
		// SQLite has one writer at a time: the statement is atomic.
		q.claim = fmt.Sprintf(`UPDATE %s SET attempts = attempts + 1, lease_token = $1, leased_until = %s + $2
WHERE id IN (SELECT id FROM %s WHERE %s ORDER BY available_at, id LIMIT $4)
RETURNING %s, available_at`, t, now, t, ready, row)
	}
	q.ack = fmt.Sprintf("DELETE FROM %s WHERE id = $1 AND lease_token = $2", t)
	q.requeue = fmt.Sprintf("UPDATE %s SET lease_token = NULL, leased_until = NULL WHERE id = $1 AND lease_token = $2", t)
	q.release = fmt.Sprintf("UPDATE %s SET lease_token = NULL, leased_until = NULL, attempts = attempts - 1 WHERE id = $1 AND lease_token = $2", t)
	q.requeueAfter = fmt.Sprintf("UPDATE %s SET lease_token = NULL, leased_until = NULL, available_at = %s + $1 WHERE id = $2 AND lease_token = $3", t, now)
	// Only the rows of the token the source still holds: a delivery
	// fenced while the database was unreachable keeps the claim's token on
	// its row, which must run out rather than be renewed with the others.
	if d == sqldb.Postgres {
		q.renew = fmt.Sprintf("UPDATE %s SET leased_until = %s + $1 WHERE lease_token = $2 AND id IN (SELECT jsonb_array_elements_text($3::jsonb)::bigint) RETURNING id", t, now)
	} else {
		q.renew = fmt.Sprintf("UPDATE %s SET leased_until = %s + $1 WHERE lease_token = $2 AND id IN (SELECT value FROM json_each($3)) RETURNING id", t, now)
	}
	q.takeDead = fmt.Sprintf("DELETE FROM %s WHERE id = $1 AND lease_token = $2 RETURNING queue, msg_id, msg_key, headers, body, created_at, attempts", t)
	q.insertDead = fmt.Sprintf("INSERT INTO %s (queue, msg_id, msg_key, headers, body, created_at, dead_at, attempts) VALUES ($1, $2, $3, $4, $5, $6, %s, $7)", q.dead, now)
	q.register = fmt.Sprintf("INSERT INTO %s (name, created_at) VALUES ($1, %s) ON CONFLICT (name) DO NOTHING", QueuesTable(t), now)
	q.registered = fmt.Sprintf("SELECT count(*) FROM %s WHERE name = $1", QueuesTable(t))
	q.deadScanMeta = fmt.Sprintf("SELECT id, msg_id, msg_key, headers, NULL, created_at, dead_at, attempts FROM %s WHERE queue = $1 AND id > $2 ORDER BY id LIMIT $3", q.dead)
	if d == sqldb.Postgres {
		q.deadBody = fmt.Sprintf("SELECT substring(body from 1 for $3::integer), octet_length(body) FROM %s WHERE id = $1 AND queue = $2", q.dead)
	} else {
		q.deadBody = fmt.Sprintf("SELECT substr(CAST(body AS BLOB), 1, $3), length(CAST(body AS BLOB)) FROM %s WHERE id = $1 AND queue = $2", q.dead)
	}
	q.deadTake = fmt.Sprintf("DELETE FROM %s WHERE id = $1 AND queue = $2 RETURNING msg_id, msg_key, headers, body", q.dead)
	q.deadDelete = fmt.Sprintf("DELETE FROM %s WHERE id = $1 AND queue = $2", q.dead)
	q.backlog = fmt.Sprintf("SELECT count(*) FROM %s WHERE queue = $1 AND available_at <= %s AND (leased_until IS NULL OR leased_until < %s)", t, now, now)
	return q
}

// insertRows is the INSERT of n messages: five parameters per row (queue,
// msg_id, msg_key, headers, body), created_at and available_at now.
func (q *queries) insertRows(n int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "INSERT INTO %s (queue, msg_id, msg_key, headers, body, created_at, available_at, attempts) VALUES ", q.table)
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		p := 5 * i
		fmt.Fprintf(&b, "($%d, $%d, $%d, $%d, $%d, %s, %s, 0)", p+1, p+2, p+3, p+4, p+5, q.now, q.now)
	}
	return b.String()
}

// channel is the PostgreSQL notification channel of queue in table: a hash,
// since a channel name is at most 63 bytes and queue names are any text.
func channel(table, queue string) string {
	h := sha256.Sum256([]byte(table + "\x00" + queue))
	return "queuekit_" + hex.EncodeToString(h[:16])
}
