package inbox

import (
	"context"
	"fmt"
	"time"

	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/retry"
)

// DefaultCleanEvery is the Cleaner's interval when given none.
const DefaultCleanEvery = time.Hour

// Clean deletes, in statements of CleanBatch rows each, the keys done more
// than Retention ago and the Lease-mode reservations whose lease ended more
// than Retention ago (left by workers that crashed and whose message never
// came back). It returns how many rows it deleted. It stops between batches
// when ctx is done.
func (i *Inbox) Clean(ctx context.Context) (int64, error) {
	var total int64
	for _, q := range []string{i.q.cleanDone, i.q.cleanStale} {
		for {
			res, err := i.db.ExecContext(ctx, q, i.cfg.Retention.Milliseconds(), i.batch)
			if err != nil {
				return total, fmt.Errorf("inbox: clean %s: %w", i.cfg.Table, err)
			}
			n, err := res.RowsAffected()
			if err != nil {
				return total, fmt.Errorf("inbox: clean %s: %w", i.cfg.Table, err)
			}
			total += n
			if n < int64(i.batch) {
				break
			}
			if err := ctx.Err(); err != nil {
				return total, nil
			}
		}
	}
	return total, nil
}

// Cleaner returns a runner that calls Clean at once and then every every
// (DefaultCleanEvery when every <= 0), for a consumer.Supervisor:
//
//	sup.Add("inbox-cleaner", ib.Cleaner(time.Hour))
//
// Its Run returns nil when its context is done, and the error of a failed
// Clean otherwise, for the Supervisor to report and restart it with backoff.
// Each batch is a statement of its own, so the cleaner never holds locks on
// many rows at once and runs beside the consumers.
func (i *Inbox) Cleaner(every time.Duration) consumer.Runner {
	if every <= 0 {
		every = DefaultCleanEvery
	}
	return consumer.RunnerFunc(func(ctx context.Context) error {
		for {
			if _, err := i.Clean(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			if !retry.Sleep(ctx, every) {
				return nil
			}
		}
	})
}
