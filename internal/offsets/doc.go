// Package offsets tracks which records of one Kafka partition were handled,
// so that a consumer commits only the highest contiguous handled offset.
//
// Records of a partition are fetched in offset order but may finish in any
// order when they are handled concurrently (by key). Committing the offset of
// the last record that finished would skip records still running: if the
// process died, they would never be delivered again. A Tracker remembers every
// fetched offset that is not yet handled and reports as committable only the
// offset after the longest handled prefix.
//
// Offsets of one partition need not be contiguous (compaction, transaction
// markers), so the Tracker never assumes that the next offset is the last
// plus one: it knows only the offsets it was given.
package offsets
