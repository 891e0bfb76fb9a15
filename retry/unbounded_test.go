package retry_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/queuekit/queuekit/retry"
)

// cycle's Unwrap returns itself; cycleJoin's Unwrap() []error holds itself.
type cycle struct{}

func (e *cycle) Error() string { return "cycle" }
func (e *cycle) Unwrap() error { return e }

type cycleJoin struct{}

func (e *cycleJoin) Error() string   { return "cycle join" }
func (e *cycleJoin) Unwrap() []error { return []error{e} }

// Review (HIGH): IsPermanent and RetryAfter walked an unbounded tree for
// ever (or overflowed the stack). They now see no mark in it, and Do treats
// it as an ordinary failure.
func TestUnboundedErrorsAreOrdinaryFailures(t *testing.T) {
	deep := retry.After(retry.Permanent(errors.New("bad")), time.Hour)
	for range 40 {
		deep = errors.Join(deep, deep)
	}
	for name, err := range map[string]error{"Unwrap returns itself": &cycle{}, "Unwrap []error holds itself": &cycleJoin{}, "errors.Join 40 deep": deep} {
		t.Run(name, func(t *testing.T) {
			if retry.IsPermanent(err) {
				t.Error("IsPermanent: true")
			}
			if d, ok := retry.RetryAfter(err); ok {
				t.Errorf("RetryAfter: %v", d)
			}
			calls := 0
			got := retry.Do(context.Background(), retry.MaxAttempts(retry.Constant(time.Microsecond), 2), func(context.Context) error {
				calls++
				return err
			})
			if got == nil || calls != 2 {
				t.Errorf("Do: %T after %d calls, want the error after 2", got, calls)
			}
		})
	}
	// Within the bound, the marks are found.
	shallow := retry.Permanent(errors.New("bad"))
	for range 10 {
		shallow = errors.Join(shallow, shallow)
	}
	if !retry.IsPermanent(shallow) {
		t.Error("IsPermanent of a 10-deep join: false")
	}
}
