package health_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/health"
)

// A consumer whose kill switch tripped is not ready, and the report says
// why; once the probes succeed it is ready again, with no reason.
func TestReadinessWhileTheKillSwitchIsTripped(t *testing.T) {
	b := memory.NewBroker()
	defer b.Close()
	src, err := b.Source("orders", memory.SourceConfig{Prefetch: 2})
	if err != nil {
		t.Fatal(err)
	}
	var down atomic.Bool
	down.Store(true)
	probeNow := make(chan struct{})
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if down.Load() {
			return errors.New("db: connection refused")
		}
		return nil
	})
	c, err := consumer.New(src, h, consumer.WithLogger(discard()), consumer.WithConcurrency(2),
		consumer.WithKillSwitch(consumer.KillSwitch{MinMessages: 3, RestartTimeout: 10 * time.Millisecond, ProbeMessages: 2}),
		consumer.WithEventHook(func(e consumer.Event) {
			if e.Kind == consumer.EventTripped {
				<-probeNow // hold the tripping worker until the test looked
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	sup := &consumer.Supervisor{Logger: discard()}
	if err := sup.Add("orders", c); err != nil {
		t.Fatal(err)
	}
	hh, err := health.NewHandler(sup)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	for range 20 {
		if err := b.Publish(ctx, "orders", &broker.Message{Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, hh.Ready(), http.StatusServiceUnavailable, "tripped")
	_, rep := probe(t, hh)
	if r := rep.Consumers[0].Reason; !strings.Contains(r, "kill switch tripped") || !strings.Contains(r, "connection refused") {
		t.Errorf("reason = %q; want the kill switch's, with the error", r)
	}
	down.Store(false)
	close(probeNow)
	eventually(t, hh.Ready(), http.StatusOK, "running")
	waitAcked := time.Now().Add(20 * time.Second)
	for b.Stats("orders").Acked != 20 && time.Now().Before(waitAcked) {
		time.Sleep(2 * time.Millisecond)
	}
	if _, rep := probe(t, hh); rep.Consumers[0].Reason != "" || b.Stats("orders").Acked != 20 {
		t.Errorf("after recovery: reason %q, %d acked; want none, 20", rep.Consumers[0].Reason, b.Stats("orders").Acked)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
