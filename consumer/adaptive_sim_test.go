package consumer

import (
	"container/heap"
	"math/rand/v2"
	"time"
)

// depPhase is a stretch of simulated time in which the dependency that a
// simulated handler calls serves at most servers calls at once (0: no
// bound), each in service (±jitter, a fraction); or, for a share
// missShare of the calls (a cache miss), in miss (±jitter).
type depPhase struct {
	until     time.Duration
	servers   int
	service   time.Duration
	missShare float64
	miss      time.Duration
}

// dep is a phase until until of a dependency serving servers calls at once
// (0: no bound), each in service.
func dep(until time.Duration, servers int, service time.Duration) depPhase {
	return depPhase{until: until, servers: servers, service: service}
}

// simResult is what a simulation saw: per phase, the calls completed; and
// every sample of the limit and of the handlers in flight, taken every
// sampleEvery of simulated time.
type simResult struct {
	done     []int
	limits   []int
	inFlight []int
	// lat sums the latency of each phase's completed calls.
	lat []time.Duration
}

const sampleEvery = 100 * time.Millisecond

// simulate runs, on simulated time, a consumer of concurrency n with an
// endless backlog whose handler makes one call to a dependency that queues
// calls beyond its servers (first come, first served). lim is nil for a
// fixed concurrency n. It is deterministic for a given seed.
func simulate(n int, lim *adaptiveLimiter, phases []depPhase, jitter float64, seed uint64) simResult {
	var (
		now   time.Duration
		rng   = rand.New(rand.NewPCG(seed, 1))
		ev    simEvents
		queue []time.Duration // start times of calls waiting for a server
		busy  int
		run   int // handlers in flight
		ph    int
		res   = simResult{done: make([]int, len(phases)), lat: make([]time.Duration, len(phases))}
	)
	limit := func() int {
		if lim == nil {
			return n
		}
		return lim.limit()
	}
	service := func() time.Duration {
		s := float64(phases[ph].service)
		if p := phases[ph].missShare; p > 0 && rng.Float64() < p {
			s = float64(phases[ph].miss)
		}
		return time.Duration(s * (1 + jitter*(2*rng.Float64()-1)))
	}
	serve := func(start time.Duration) {
		busy++
		heap.Push(&ev, simEvent{at: now + service(), start: start})
	}
	admit := func() {
		for run < limit() {
			run++
			if s := phases[ph].servers; s == 0 || busy < s {
				serve(now)
			} else {
				queue = append(queue, now)
			}
		}
	}
	nextSample := time.Duration(0)
	admit()
	for ev.Len() > 0 {
		e := heap.Pop(&ev).(simEvent)
		for nextSample <= e.at && nextSample < phases[len(phases)-1].until {
			res.limits = append(res.limits, limit())
			res.inFlight = append(res.inFlight, run)
			nextSample += sampleEvery
		}
		now = e.at
		for ph < len(phases)-1 && now >= phases[ph].until {
			ph++
		}
		if now >= phases[len(phases)-1].until {
			break
		}
		busy--
		res.done[ph]++
		res.lat[ph] += now - e.start
		if lim != nil {
			lim.observe(now-e.start, false, run)
		}
		run--
		for len(queue) > 0 && (phases[ph].servers == 0 || busy < phases[ph].servers) {
			start := queue[0]
			queue = queue[1:]
			serve(start)
		}
		admit()
	}
	return res
}

type simEvent struct{ at, start time.Duration }

type simEvents []simEvent

func (e simEvents) Len() int           { return len(e) }
func (e simEvents) Less(i, j int) bool { return e[i].at < e[j].at }
func (e simEvents) Swap(i, j int)      { e[i], e[j] = e[j], e[i] }
func (e *simEvents) Push(x any)        { *e = append(*e, x.(simEvent)) }
func (e *simEvents) Pop() any {
	old := *e
	x := old[len(old)-1]
	*e = old[:len(old)-1]
	return x
}
