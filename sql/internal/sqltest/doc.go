// Package sqltest gives the tests of queuekit's SQL packages databases of
// their own: a fresh PostgreSQL database per call (created on the server of
// QUEUEKIT_POSTGRES_URL, dropped at cleanup) and a SQLite file in a
// temporary directory. Tests never touch a database they did not create.
//
// When PostgreSQL cannot be reached, a test that asks for it is skipped, or
// fails when QUEUEKIT_REQUIRE_BROKERS=1 (CI); PrintSkipSummary, called from
// TestMain, reports the skips in one line.
package sqltest
