package main

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
)

// nopCloser gives the memory broker's dead letters the Close the adapters'
// have.
type nopCloser struct{ broker.DeadLetters }

func (nopCloser) Close(context.Context) error { return nil }

// The whole operator scenario, in-process, on the memory broker: the
// commands' flags, output and exit codes, independent of a network broker.
func TestScenarioMemory(t *testing.T) {
	b := memory.NewBroker()
	defer b.Close()
	const queue = "orders"
	src, err := b.Source(queue, memory.SourceConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close(context.Background())
	f := fixture{
		name: "memory broker (in-process)",
		run: func(t *testing.T, args ...string) result {
			t.Helper()
			var stdout, stderr bytes.Buffer
			a := newApp(&stdout, &stderr, func(string) string { return "" })
			a.open = func(tg target) (deadLetters, error) {
				if tg.queue != queue || tg.dlq != "" {
					t.Errorf("target %+v", tg)
				}
				return nopCloser{b.DeadLettersOf(tg.queue)}, nil
			}
			args = append(args, "--queue", queue, "--amqp-url", "amqp://memory/")
			r := result{code: a.run(context.Background(), args), stdout: stdout.String(), stderr: stderr.String()}
			t.Logf("$ queuekit %q\n%s", args, r)
			return r
		},
		deadLetter: func(t *testing.T, letters []seedLetter) {
			ctx := context.Background()
			for _, l := range letters {
				if err := b.Publish(ctx, queue, &broker.Message{Body: []byte(l.body), Header: l.header}); err != nil {
					t.Fatal(err)
				}
				d, err := src.Receive(ctx)
				if err != nil {
					t.Fatal(err)
				}
				reason := l.reason
				reason.Time = time.Now()
				if err := d.DeadLetter(ctx, reason); err != nil {
					t.Fatal(err)
				}
			}
		},
		arrived: func(t *testing.T) []string {
			var got []string
			for {
				ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
				d, err := src.Receive(ctx)
				cancel()
				if errors.Is(err, context.DeadlineExceeded) {
					return got
				}
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, string(d.Message().Body))
				if err := d.Ack(context.Background()); err != nil {
					t.Fatal(err)
				}
			}
		},
	}
	runScenario(t, f, queue)
}
