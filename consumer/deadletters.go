package consumer

import (
	"errors"
	"fmt"

	"github.com/queuekit/queuekit/broker"
)

// ErrNoDeadLetters is returned (wrapped) by Consumer.DeadLetters when the
// source's dead letters cannot be browsed (it is not a
// broker.DeadLetterSource), and by Supervisor.DeadLetters for a runner
// without a DeadLetters method.
var ErrNoDeadLetters = errors.New("queuekit: no dead letters to show")

// DeadLetters returns the dead letters of the consumer's source: its
// dead-letter queue or topic, to browse, redrive and purge (see
// broker.DeadLetters). It returns an error wrapping ErrNoDeadLetters when the
// source is not a broker.DeadLetterSource. It may be called at any time,
// also before Run and after Shutdown, as long as the source allows it.
func (c *Consumer) DeadLetters() (broker.DeadLetters, error) {
	ds, ok := c.src.(broker.DeadLetterSource)
	if !ok {
		return nil, fmt.Errorf("%w: source %T of consumer %s is not a broker.DeadLetterSource", ErrNoDeadLetters, c.src, c.Name())
	}
	dl, err := deadLettersOf(ds)
	if err != nil {
		return nil, fmt.Errorf("queuekit: dead letters of consumer %s: %w", c.Name(), err)
	}
	if dl == nil {
		return nil, fmt.Errorf("%w: source %T of consumer %s returned none", ErrNoDeadLetters, c.src, c.Name())
	}
	return dl, nil
}

// deadLettersOf calls ds.DeadLetters, turning a panic into an error.
func deadLettersOf(ds broker.DeadLetterSource) (dl broker.DeadLetters, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("DeadLetters of %T panicked: %v", ds, p)
		}
	}()
	return ds.DeadLetters(), nil
}

// DeadLetters returns the dead letters of the named runner: its
// DeadLetters method's answer (Consumer.DeadLetters). It returns an error
// wrapping ErrUnknownRunner for a name that was never added, and one wrapping
// ErrNoDeadLetters for a runner without dead letters to show. Package admin
// reads it for every runner.
func (s *Supervisor) DeadLetters(name string) (broker.DeadLetters, error) {
	r, err := s.runner(name)
	if err != nil {
		return nil, err
	}
	switch r := r.(type) {
	case *Consumer:
		if r != nil {
			return r.DeadLetters()
		}
	case broker.DeadLetterSource:
		dl, err := deadLettersOf(r)
		if err != nil {
			return nil, fmt.Errorf("queuekit: dead letters of runner %q: %w", name, err)
		}
		if dl != nil {
			return dl, nil
		}
	}
	return nil, fmt.Errorf("%w: runner %q (%T) has no DeadLetters method", ErrNoDeadLetters, name, r)
}
