package brokertest_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/brokertest"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
)

// TestKillSwitchOutageMemory runs the outage test (brokertest.RunOutage) on
// broker/memory: the kill switch keeps a dependency's outage from
// dead-lettering anything there too. It is also the harness's own test on the
// broker that needs nothing outside the process. QUEUEKIT_FULL=1 runs the full
// size (10,000 messages, a 10 s outage); the default is 2,000 and 2 s.
func TestKillSwitchOutageMemory(t *testing.T) {
	t.Parallel()
	o := brokertest.Outage{
		Name:     "memory",
		Parallel: true,
		// MinMessages below MaxDeliveries (5), not the default 20: the
		// memory broker hands a requeued message back at once, at the head
		// of the queue, so the first worker whose call fails at the outage
		// takes the same message again and again and spends its whole
		// budget (5 failures, 1 ms each) before the switch has seen 20
		// outcomes: with 20, 2 or 3 of 2,000 messages were dead-lettered in
		// every run (the switch trips on failures, and failures before the
		// trip spend an attempt). RabbitMQ and Kafka, where a redelivery
		// takes a round trip, ran with the default.
		KillSwitch: &consumer.KillSwitch{
			Window:      time.Second,
			MinMessages: 4,
		},
		// And a budget of 10: even with MinMessages 4 a loaded machine
		// (CI, 2 cores) let the first failing message spend 4 attempts
		// before the trip and a 5th on the failed probe after it, and be
		// dead-lettered (1 in 2,000 in one CI run of 2026-12-06; 8 of 8
		// runs passed alone). The memory broker hands it back in
		// microseconds, so a budget counted in attempts passes at once;
		// the case is about the kill switch, which must keep the other
		// 1,999 messages' budgets whole.
		MaxDeliveries: 10,
		Setup: func(t *testing.T) brokertest.Fixture {
			b := memory.NewBroker()
			t.Cleanup(func() { b.Close() })
			const queue = "outage"
			return brokertest.Fixture{
				Destination:        queue,
				NewPublisher:       func(t *testing.T) broker.Publisher { return b.Publisher() },
				PublishDestination: queue,
				NewSource: func(t *testing.T, prefetch int) broker.Source {
					src, err := b.Source(queue, memory.SourceConfig{Prefetch: prefetch})
					if err != nil {
						t.Fatal(err)
					}
					return src
				},
				DeadLetters: func(ctx context.Context, t *testing.T, n int) []broker.Message {
					for len(b.DeadLetters(queue)) < n && ctx.Err() == nil {
						time.Sleep(5 * time.Millisecond)
					}
					return b.DeadLetters(queue)
				},
			}
		},
	}
	if os.Getenv("QUEUEKIT_FULL") == "1" && !testing.Short() {
		o.Messages, o.Duration, o.Parallel, o.WantDeadLettersWithout = 10000, 10*time.Second, false, true
	}
	brokertest.RunOutage(t, o)
}
