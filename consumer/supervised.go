package consumer

import (
	"fmt"

	"github.com/queuekit/queuekit/broker"
)

// Attach implements Supervised: Supervisor.Add calls it. The consumer takes
// name as its own (WithName), for its logs, events, the handler context
// (NameFromContext, which metrics middleware reads) and health, so that a
// consumer added as "orders" is "orders" everywhere. Its events go to the
// Supervisor's emit as well as to its own hooks, and its hooks (WithEventHook)
// receive the Supervisor's events about it (starting, failed, restarting).
//
// Attach returns an error wrapping broker.ErrInvalidConfig when name is not
// a valid name (see WithName), or the consumer was already added to a
// Supervisor, is running or has stopped.
func (c *Consumer) Attach(name string, emit func(Event)) (hook func(Event), err error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.sup.Load() != nil:
		return nil, fmt.Errorf("%w: consumer %s was already added to a Supervisor", broker.ErrInvalidConfig, c.name())
	case c.cur != nil:
		return nil, fmt.Errorf("%w: consumer %s is running; add it to the Supervisor before it runs", broker.ErrInvalidConfig, c.name())
	case c.closed:
		return nil, fmt.Errorf("%w: consumer %s was stopped", broker.ErrInvalidConfig, c.name())
	}
	// Written under c.mu, which Run takes before it reads the name (newRun),
	// so a Run that starts after Attach sees it.
	c.setName(name)
	if emit != nil {
		c.sup.Store(&emit)
	}
	if c.o.hook == nil {
		return nil, nil
	}
	return c.callHook, nil
}

var _ Supervised = (*Consumer)(nil)
