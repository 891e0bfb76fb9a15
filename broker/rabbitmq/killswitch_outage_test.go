package rabbitmq

import (
	"os"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker/brokertest"
)

// TestKillSwitchOutage is issue 14's outage test on a real RabbitMQ
// (brokertest.RunOutage): a dependency the handler calls fails every call
// for a stretch in the middle of the run. With the consumer's kill switch
// nothing is dead-lettered (to the queue's DLX and dead-letter queue) and
// every message is handled once the dependency is back; without it, the
// same outage's dead letters are counted. Each run has a queue of its own
// in the tests' vhost (conformanceFixture).
//
// It runs on a classic and on a quorum queue: a quorum queue hands a
// requeued message out again at once (as Kafka does), a classic-queue
// requeue goes to the back of the queue, so a message spends its budget at
// very different speeds. The default size keeps CI short: 2,000 messages, a
// 2 s outage, all four runs at once. QUEUEKIT_FULL=1 runs the figures of the
// issue: 10,000 messages, a 10 s outage, one run after the other:
//
//	QUEUEKIT_FULL=1 go test -count=1 -run TestKillSwitchOutage -v ./broker/rabbitmq
func TestKillSwitchOutage(t *testing.T) {
	needBroker(t)
	// Parallel: it starts after the serial tests (the chaos tests cut every
	// connection of the vhost), like TestConformance.
	t.Parallel()
	full := os.Getenv("QUEUEKIT_FULL") == "1" && !testing.Short()
	for _, typ := range []string{Classic, Quorum} {
		t.Run(typ, func(t *testing.T) {
			if !full {
				t.Parallel() // each run has its own queue; the handlers mostly sleep
			}
			o := brokertest.Outage{
				Name:     "rabbitmq (" + typ + ")",
				Setup:    func(t *testing.T) brokertest.Fixture { return conformanceFixture(t, typ) },
				Parallel: true,
			}
			if full {
				// Without the kill switch, only the quorum queue is sure
				// to dead-letter: a classic-queue requeue republishes
				// the message at the back of the queue, so its attempts
				// are a whole backlog apart (about 5 s at 7,000 messages
				// and ~1,500 failures a second), and a 10 s outage
				// spends 2-3 of its 5 (measured: 0 dead letters).
				o.Messages, o.Duration, o.Parallel, o.WantDeadLettersWithout = 10000, 10*time.Second, false, typ == Quorum
			}
			brokertest.RunOutage(t, o)
		})
	}
}
