package consumer

import (
	"errors"
	"fmt"
	"sync/atomic"
)

// ErrNoStats is returned (wrapped) by Supervisor.Stats for a runner that
// keeps no counters (one without a Stats() Stats method).
var ErrNoStats = errors.New("queuekit: runner keeps no stats")

// Stats are a consumer's counters: what it is doing now (InFlight) and what
// it did since it was made, over all its Runs (the rest, cumulative; they
// only grow). An operator page turns them into rates by taking the
// difference between two snapshots.
//
// Each counter is exact on its own, but a snapshot is not taken at one
// instant: a message finishing while Stats runs may be counted in one field
// and not yet in another.
type Stats struct {
	// InFlight is the number of handlers running now.
	InFlight int `json:"in_flight"`
	// Limit is how many handlers may run at once now: WithConcurrency's n,
	// or less while the kill switch probes (KillSwitch.ProbeConcurrency) or
	// adaptive concurrency holds it lower; 0 while the kill switch is
	// tripped. Never above n. Handlers already running when it drops count
	// against it: no new one starts until fewer than Limit run (except
	// that while probing, only the probes count against the probe
	// concurrency: see WithKillSwitch). InFlight may thus exceed it for a
	// while.
	Limit int `json:"limit"`
	// Handled counts handler calls that returned nil (the message was then
	// acknowledged, or the acknowledgement was tried: see SettleFailed).
	Handled int64 `json:"handled"`
	// Failed counts handler calls that returned an error or panicked, each
	// attempt once: a message that failed three times and was then
	// dead-lettered counts three.
	Failed int64 `json:"failed"`
	// Requeued counts failed messages sent back for another try (with or
	// without a delay) within their delivery budget.
	Requeued int64 `json:"requeued"`
	// DeadLettered counts messages dead-lettered: a permanent error, or the
	// delivery budget spent.
	DeadLettered int64 `json:"dead_lettered"`
	// GivenBack counts deliveries given back to the broker without a
	// verdict and without spending an attempt: received as intake stopped,
	// handled with ErrNotHandled after their intake stopped, failed while
	// the kill switch was tripped (Failed counts those too), or whose
	// handler was still running at the drain deadline (Abandoned counts
	// those too).
	GivenBack int64 `json:"given_back"`
	// Abandoned counts handlers still running at a drain deadline, whose
	// messages were given back.
	Abandoned int64 `json:"abandoned"`
	// SettleFailed counts tries of a settlement (ack, requeue, dead letter,
	// give-back) that the broker did not take, each try once; the message
	// stays with the broker, which delivers it again.
	SettleFailed int64 `json:"settle_failed"`
}

// add adds the cumulative counters of o to s (InFlight and Limit are left alone).
func (s *Stats) add(o Stats) {
	s.Handled += o.Handled
	s.Failed += o.Failed
	s.Requeued += o.Requeued
	s.DeadLettered += o.DeadLettered
	s.GivenBack += o.GivenBack
	s.Abandoned += o.Abandoned
	s.SettleFailed += o.SettleFailed
}

// slotCounts are the counters one worker keeps for the messages it
// settles. Only that worker writes them (a load and a store, no
// read-modify-write: there is no other writer to race with), on the slot's
// own cache line, so counting costs the hot path no shared-line traffic;
// Stats reads them atomically from any goroutine. A success settled with a
// verdict, the common case, writes one counter (handled): every one is
// settled with a verdict, so what a DrainReport calls Handled (settled with
// a verdict) is handled + failedSettled, not a counter of its own.
type slotCounts struct {
	handled, failed, requeued, deadLettered atomic.Int64
	// failedSettled counts the failures the worker settled with a verdict
	// (failed counts those given back unspent by the kill switch too).
	failedSettled atomic.Int64
}

// inc increments a counter that only the calling worker writes.
func inc(c *atomic.Int64) { c.Store(c.Load() + 1) }

// count records in the worker's counters that it settled, with a verdict,
// the delivery whose handler returned herr: settlement s, whose error was
// settleErr. A requeue or dead letter the broker did not take is counted in
// SettleFailed (by settleFailed), not here.
func (sc *slotCounts) count(herr error, s Settlement, settleErr error) {
	if herr == nil {
		inc(&sc.handled)
	} else {
		inc(&sc.failed)
		inc(&sc.failedSettled)
	}
	if settleErr != nil {
		return
	}
	switch s {
	case SettledRequeue, SettledDelayedRequeue:
		inc(&sc.requeued)
	case SettledDeadLetter:
		inc(&sc.deadLettered)
	}
}

// countGivenBack records a failure given back unspent, without a verdict,
// because the kill switch was tripped (ksOutcome gives back failures only).
func (sc *slotCounts) countGivenBack() { inc(&sc.failed) }

// runStats returns the counters of run r so far. For a run in progress it
// races benignly with the workers (each counter is read atomically).
func (r *run) runStats() Stats {
	st := Stats{
		GivenBack:    r.givenBack.Load() + r.abandonedCount.Load() + r.abandonedExtra.Load(),
		Abandoned:    r.abandonedCount.Load(),
		SettleFailed: r.settleFails.Load(),
	}
	for i := range r.slots {
		s := &r.slots[i]
		st.Handled += s.counts.handled.Load()
		st.Failed += s.counts.failed.Load()
		st.Requeued += s.counts.requeued.Load()
		st.DeadLettered += s.counts.deadLettered.Load()
	}
	return st
}

// settledCount returns how many deliveries the workers of r settled with a
// verdict so far (each worker counts its own, on its own cache line: the
// message path touches no shared counter): their successes, all settled
// with a verdict, and the failures they settled with one.
func (r *run) settledCount() int64 {
	var n int64
	for i := range r.slots {
		c := &r.slots[i].counts
		n += c.handled.Load() + c.failedSettled.Load()
	}
	return n
}

// inFlight returns the number of handlers of r running now.
func (r *run) inFlight() int {
	n := 0
	for i := range r.slots {
		if r.slots[i].state.Load() == slotRunning {
			n++
		}
	}
	return n
}

// Stats returns the consumer's counters (see Stats). It is cheap (no
// locks on the message path, a short one here) and safe to call from any
// goroutine, at any time: before Run it reports zeros, after Shutdown what
// the consumer did.
func (c *Consumer) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.stats
	st.Limit = c.gate.limit()
	if c.tripped {
		st.Limit = 0 // the kill switch holds the intake stopped
	}
	if r := c.cur; r != nil {
		st.add(r.runStats())
		st.InFlight = r.inFlight()
	}
	return st
}

// foldStats adds the counters of run r, which has finished, to the
// consumer's totals. The caller holds c.mu and clears c.cur in the same
// critical section, so that Stats counts r once, either way.
func (c *Consumer) foldStats(r *run) {
	c.stats.add(r.runStats())
}

// Stats returns the counters of the named runner: its Stats method's answer
// (Consumer.Stats). It returns an error wrapping ErrUnknownRunner for a
// name that was never added, and one wrapping ErrNoStats for a runner
// without a Stats() Stats method. Package admin reads it for every runner.
func (s *Supervisor) Stats(name string) (Stats, error) {
	r, err := s.runner(name)
	if err != nil {
		return Stats{}, err
	}
	switch r := r.(type) {
	case *Consumer:
		if r != nil {
			return r.Stats(), nil
		}
	case interface{ Stats() Stats }:
		return statsOf(r)
	}
	return Stats{}, fmt.Errorf("%w: runner %q (%T) has no Stats method", ErrNoStats, name, r)
}

// statsOf calls sr.Stats, turning a panic (a runner is user code) into an
// error.
func statsOf(sr interface{ Stats() Stats }) (st Stats, err error) {
	defer func() {
		if p := recover(); p != nil {
			st, err = Stats{}, fmt.Errorf("queuekit: Stats of %T panicked: %v", sr, p)
		}
	}()
	return sr.Stats(), nil
}
