package retry_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/queuekit/queuekit/retry"
)

// A policy is a shared value; Do retries the operation under it and stops at
// once on a permanent error.
func ExampleDo() {
	policy := retry.MaxAttempts(retry.Exponential(time.Millisecond, 10*time.Millisecond), 5)

	attempts := 0
	err := retry.Do(context.Background(), policy, func(ctx context.Context) error {
		attempts++
		if attempts < 3 {
			return errors.New("connection reset") // transient: retried
		}
		return nil
	})
	fmt.Println(attempts, err)

	attempts = 0
	err = retry.Do(context.Background(), policy, func(ctx context.Context) error {
		attempts++
		return retry.Permanent(errors.New("invalid payload"))
	})
	fmt.Println(attempts, err, retry.IsPermanent(err))
	// Output:
	// 3 <nil>
	// 1 invalid payload true
}
