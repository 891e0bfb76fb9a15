// Package sqldb opens the databases that queuekit's SQL packages run on
// (PostgreSQL through pgx, SQLite through a pure-Go driver) and holds what
// those packages share: the dialect of a *sql.DB, table-name checks, and the
// check that an existing table has the columns the library needs.
//
// # Opening
//
// Open takes a URL and returns a *sql.DB configured for queuekit:
//
//	db, dialect, err := sqldb.Open("postgres://app@db.internal:5432/app")
//	db, dialect, err := sqldb.Open("sqlite:orders.db")
//
// A PostgreSQL database is opened with pgx's database/sql driver. A SQLite
// file is opened with modernc.org/sqlite (no cgo) in WAL mode, with a busy
// timeout, foreign keys on, transactions that take the write lock when they
// begin (BEGIN IMMEDIATE), and one connection: SQLite has a single writer,
// and serialising in the pool is cheaper than retrying on SQLITE_BUSY. With
// one connection, code that runs inside a transaction must use that
// transaction for every query (inbox.Tx), or it waits for itself.
//
// Open does not connect: the first query does, and a database that is down
// gives an error then, for which IsUnavailable reports true.
//
// # Errors
//
// Errors never contain a password: Redact removes it from a URL.
// CheckColumns reports a table that lacks a column, or has one of another
// type, with an error that names the table and the column and wraps
// ErrSchema.
package sqldb
