package main

import (
	"time"

	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/sql/sqldb"
)

// When the orders' database goes away, every order fails: without more, each
// would be redelivered until its delivery budget (maxDeliveries) is spent and
// then dead-lettered, and an outage of a few minutes would leave thousands of
// good orders for an operator to redrive by hand. Instead the orders consumer
// has a kill switch (consumer.WithKillSwitch): once database failures reach
// half of its recent outcomes — at least killSwitchMinMessages of them, so
// three failures in a row do — it stops taking orders. Its state is
// "tripped", with the reason, on /readyz and /admin/, and
// queuekit_events_total{event="tripped"} counts it; the orders that fail in
// flight are given back to the broker without spending an attempt. After
// -kill-switch-restart it probes the database with one order at a time:
// another database failure trips it again, killSwitchProbeMessages
// successes in a row and it runs as before.
//
// Only the database's failures count (Counts: sqldb.IsUnavailable — refused,
// reset or lost connections, a server shutting down or not accepting
// connections, network timeouts). A bad order, an unavailable item or an
// order out of stock is the order's fault, not the database's: those are
// permanent errors, dead-lettered at once as before, and never trip the
// switch however many there are.
//
// Before it trips, failures are ordinary ones, which spend an attempt: a
// sudden outage trips it at about the killSwitchMinMessages-th failure, so
// about two deliveries spend one, far fewer than the budget, and no order is
// dead-lettered by the outage even when the broker hands the same order out
// again at once (RabbitMQ and memory requeue at the head). The outage test
// (killswitch_test.go) measures it: 2 requeued, the highest attempt 2 of 5.
const (
	killSwitchWindow        = 10 * time.Second
	killSwitchMinMessages   = 3
	killSwitchThreshold     = 0.5
	killSwitchProbeMessages = 3
)

// killSwitchConfig is the orders consumer's kill switch (see above).
func (s *service) killSwitchConfig() consumer.KillSwitch {
	return consumer.KillSwitch{
		Window:           killSwitchWindow,
		MinMessages:      killSwitchMinMessages,
		Threshold:        killSwitchThreshold,
		RestartTimeout:   s.cfg.killSwitchRestart,
		ProbeConcurrency: 1,
		ProbeMessages:    killSwitchProbeMessages,
		Counts:           sqldb.IsUnavailable,
	}
}
