package retry

import (
	"math/rand/v2"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// A Policy describes how to space out and when to stop retries. A Policy value
// is immutable and safe to share between goroutines: every operation gets a
// fresh backoff.BackOff from NewBackOff, which is not safe to share.
type Policy interface {
	// NewBackOff returns a new, reset backoff for one operation.
	NewBackOff() backoff.BackOff
}

// PolicyFunc adapts a function to a Policy.
type PolicyFunc func() backoff.BackOff

// NewBackOff calls f.
func (f PolicyFunc) NewBackOff() backoff.BackOff { return f() }

// Exponential returns a policy whose n-th delay is drawn uniformly from
// [0, min(max, initial·2ⁿ⁻¹)] ("full jitter"), so that many consumers failing
// at once do not retry in lockstep. It never stops by itself: bound it with
// MaxAttempts or MaxElapsed. A non-positive initial means 100ms; a max below
// initial means initial.
func Exponential(initial, max time.Duration) Policy {
	if initial <= 0 {
		initial = 100 * time.Millisecond
	}
	if max < initial {
		max = initial
	}
	return PolicyFunc(func() backoff.BackOff { return &fullJitter{initial: initial, max: max} })
}

// fullJitter is a backoff.BackOff with exponential growth and full jitter.
type fullJitter struct {
	initial, max time.Duration
	n            int
}

func (b *fullJitter) NextBackOff() time.Duration {
	ceil := b.initial
	for i := 0; i < b.n && ceil < b.max; i++ {
		ceil *= 2
	}
	ceil = min(ceil, b.max)
	b.n++
	return time.Duration(rand.Int64N(int64(ceil) + 1))
}

func (b *fullJitter) Reset() { b.n = 0 }

// Constant returns a policy that waits d between attempts. It never stops by
// itself: bound it with MaxAttempts or MaxElapsed.
func Constant(d time.Duration) Policy {
	if d < 0 {
		d = 0
	}
	return PolicyFunc(func() backoff.BackOff { return backoff.NewConstantBackOff(d) })
}

// MaxAttempts bounds p to n attempts in all (n-1 retries). n < 1 means 1.
func MaxAttempts(p Policy, n int) Policy {
	if n < 1 {
		n = 1
	}
	return PolicyFunc(func() backoff.BackOff { return backoff.WithMaxRetries(p.NewBackOff(), uint64(n-1)) })
}

// MaxElapsed bounds p so that no retry starts more than d after the first
// delay was asked for.
func MaxElapsed(p Policy, d time.Duration) Policy {
	return PolicyFunc(func() backoff.BackOff { return &maxElapsed{b: p.NewBackOff(), max: d} })
}

type maxElapsed struct {
	b     backoff.BackOff
	max   time.Duration
	start time.Time
}

func (m *maxElapsed) NextBackOff() time.Duration {
	now := time.Now()
	if m.start.IsZero() {
		m.start = now
	}
	next := m.b.NextBackOff()
	if next == backoff.Stop || now.Add(next).Sub(m.start) > m.max {
		return backoff.Stop
	}
	return next
}

func (m *maxElapsed) Reset() {
	m.start = time.Time{}
	m.b.Reset()
}

// Default is the policy middleware and Supervisor use when given none:
// 3 attempts, exponential from 100ms up to 5s with full jitter.
var Default = MaxAttempts(Exponential(100*time.Millisecond, 5*time.Second), 3)
