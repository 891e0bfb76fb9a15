package retry_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/queuekit/queuekit/retry"
)

var errTransient = errors.New("transient")

func TestDoStopsOnSuccessPermanentErrorsAndMaxAttempts(t *testing.T) {
	fast := retry.Constant(time.Millisecond)
	for _, tc := range []struct {
		name      string
		policy    retry.Policy
		failFirst int   // attempts that fail before success
		err       error // what failing attempts return
		wantCalls int
		wantErr   error
	}{
		{"success on the first attempt calls once", retry.MaxAttempts(fast, 5), 0, errTransient, 1, nil},
		{"success on the third attempt calls three times", retry.MaxAttempts(fast, 5), 2, errTransient, 3, nil},
		{"a transient error is retried up to MaxAttempts", retry.MaxAttempts(fast, 4), 100, errTransient, 4, errTransient},
		{"a permanent error is not retried", retry.MaxAttempts(fast, 5), 100, retry.Permanent(errTransient), 1, errTransient},
		{"backoff's own Permanent counts as permanent", retry.MaxAttempts(fast, 5), 100, backoff.Permanent(errTransient), 1, errTransient},
		{"MaxAttempts below 1 means a single attempt", retry.MaxAttempts(fast, 0), 100, errTransient, 1, errTransient},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			err := retry.Do(context.Background(), tc.policy, func(ctx context.Context) error {
				calls++
				if calls <= tc.failFirst {
					return tc.err
				}
				return nil
			})
			if calls != tc.wantCalls || !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Errorf("Do = %v after %d calls; want %v after %d calls", err, calls, tc.wantErr, tc.wantCalls)
			}
		})
	}
}

func TestDoNeverSleepsPastTheContextDeadline(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	calls := 0
	start := time.Now()
	err := retry.Do(ctx, retry.Constant(time.Hour), func(ctx context.Context) error {
		calls++
		return errTransient
	})
	if took := time.Since(start); took > 40*time.Millisecond {
		t.Errorf("Do took %v with a 1h delay and a 50ms deadline; want an immediate return", took)
	}
	if calls != 1 || !errors.Is(err, errTransient) {
		t.Errorf("Do = %v after %d calls; want the last error after 1 call", err, calls)
	}
}

func TestDoReturnsWhenTheContextIsCancelledDuringTheWait(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	time.AfterFunc(20*time.Millisecond, cancel)
	err := retry.Do(ctx, retry.Constant(time.Hour), func(ctx context.Context) error {
		calls++
		return errTransient
	})
	if calls != 1 || !errors.Is(err, errTransient) {
		t.Errorf("Do = %v after %d calls; want the last error after 1 call", err, calls)
	}
}

func TestDoHonoursRetryAfter(t *testing.T) {
	calls := 0
	var gap time.Duration
	var last time.Time
	err := retry.Do(context.Background(), retry.MaxAttempts(retry.Constant(0), 2), func(ctx context.Context) error {
		calls++
		if calls == 1 {
			last = time.Now()
			return retry.After(errTransient, 30*time.Millisecond)
		}
		gap = time.Since(last)
		return nil
	})
	if err != nil || calls != 2 || gap < 30*time.Millisecond {
		t.Errorf("Do = %v, calls %d, gap %v; want success on the 2nd call at least 30ms later", err, calls, gap)
	}
	if d, ok := retry.RetryAfter(fmt.Errorf("wrapped: %w", retry.After(errTransient, time.Second))); !ok || d != time.Second {
		t.Errorf("RetryAfter(wrapped After(err, 1s)) = %v, %v; want 1s, true", d, ok)
	}
}

func TestExponentialDrawsFullJitterUnderAGrowingCeiling(t *testing.T) {
	const initial, max = 10 * time.Millisecond, 80 * time.Millisecond
	b := retry.Exponential(initial, max).NewBackOff()
	ceil := initial
	for i := 0; i < 10; i++ {
		d := b.NextBackOff()
		if d < 0 || d > ceil {
			t.Errorf("delay %d = %v; want within [0, %v]", i, d, ceil)
		}
		ceil = min(2*ceil, max)
	}
}

func TestMaxElapsedStopsOnceTheBudgetIsSpent(t *testing.T) {
	b := retry.MaxElapsed(retry.Constant(10*time.Millisecond), 25*time.Millisecond).NewBackOff()
	if d := b.NextBackOff(); d != 10*time.Millisecond {
		t.Fatalf("first delay = %v; want 10ms", d)
	}
	time.Sleep(30 * time.Millisecond)
	if d := b.NextBackOff(); d != backoff.Stop {
		t.Errorf("delay after the budget = %v; want backoff.Stop", d)
	}
}

// A Policy is shared between goroutines (run with -race).
func TestPoliciesAreSafeToShare(t *testing.T) {
	p := retry.MaxElapsed(retry.MaxAttempts(retry.Exponential(time.Microsecond, 10*time.Microsecond), 3), time.Second)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			calls := 0
			_ = retry.Do(context.Background(), p, func(ctx context.Context) error { calls++; return errTransient })
			if calls != 3 {
				t.Errorf("calls = %d; want 3 with every goroutine getting its own backoff", calls)
			}
		}()
	}
	wg.Wait()
}

func TestNilErrorsStayNil(t *testing.T) {
	if retry.Permanent(nil) != nil || retry.After(nil, time.Second) != nil || retry.IsPermanent(nil) {
		t.Error("Permanent(nil), After(nil) must be nil and IsPermanent(nil) false")
	}
}
