// Package pgnotify listens for PostgreSQL notifications on a connection
// taken from a *sql.DB opened with pgx's database/sql driver, so that the
// outbox relay and the SQL queue wake up when rows arrive instead of polling.
package pgnotify
