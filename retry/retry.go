package retry

import (
	"context"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// Do calls op until it returns nil, returns a permanent error, the policy
// stops, or ctx is done; it returns op's last error (nil on success).
//
// Between attempts it waits the policy's next delay, or the delay asked for
// with After. It never sleeps past ctx's deadline: when the next attempt
// could not start before the deadline, Do returns the last error at once.
// The backoff is built only after the first failure, so a first-try success
// costs nothing beyond the call. A nil policy means Default.
func Do(ctx context.Context, p Policy, op func(ctx context.Context) error) error {
	var b backoff.BackOff
	for {
		err := op(ctx)
		if err == nil || IsPermanent(err) || ctx.Err() != nil {
			return err
		}
		if b == nil {
			if p == nil {
				p = Default
			}
			b = p.NewBackOff()
		}
		d := b.NextBackOff()
		if d == backoff.Stop {
			return err
		}
		if ra, ok := RetryAfter(err); ok {
			d = ra
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= d {
			return err
		}
		if !Sleep(ctx, d) {
			return err
		}
	}
}

// Sleep waits d or until ctx is done, and reports whether it waited the
// whole of d. It is the wait between attempts that Do uses, for loops that
// space out attempts themselves.
func Sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
