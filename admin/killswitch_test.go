package admin_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/queuekit/queuekit/admin"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
)

// A consumer whose kill switch tripped shows as tripped, with the reason
// (escaped, its URL password redacted), on the page and in the JSON API,
// and the page still offers Pause.
func TestTrippedConsumerShowsItsReason(t *testing.T) {
	b := memory.NewBroker()
	defer b.Close()
	src, err := b.Source("orders", memory.SourceConfig{Prefetch: 2})
	if err != nil {
		t.Fatal(err)
	}
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		return errors.New("dial postgres://shop:hunter2@db:5432/shop: <b>connection refused</b>")
	})
	c, err := consumer.New(src, h, consumer.WithLogger(quiet), consumer.WithConcurrency(2),
		consumer.WithKillSwitch(consumer.KillSwitch{MinMessages: 3, RestartTimeout: time.Hour}))
	if err != nil {
		t.Fatal(err)
	}
	sup := &consumer.Supervisor{Logger: quiet}
	if err := sup.Add("orders", c); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Supervisor.Run = %v", err)
		}
	}()
	for range 10 {
		if err := b.Publish(ctx, "orders", &broker.Message{Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the trip", func() bool { return state(sup, "orders") == consumer.StateTripped })

	srv := server(t, newHandler(t, admin.Config{Supervisor: sup}))
	cl := newClient(t, srv.URL+"/admin")
	code, body := cl.get("/")
	if code != 200 {
		t.Fatalf("GET / = %d %s", code, body)
	}
	for _, want := range []string{`class="state tripped"`, "kill switch tripped: failure ratio", "&lt;b&gt;connection refused&lt;/b&gt;",
		"postgres://shop:xxxxx@db", `action="pause"`} {
		if !strings.Contains(body, want) {
			t.Errorf("GET / lacks %q:\n%s", want, body)
		}
	}
	if strings.Contains(body, "hunter2") || strings.Contains(body, "<b>connection") {
		t.Errorf("GET / shows the password or unescaped error text:\n%s", body)
	}
	code, body = cl.get("/api/runners")
	var rs struct {
		Runners []admin.Runner `json:"runners"`
	}
	if err := json.Unmarshal([]byte(body), &rs); err != nil || code != 200 || len(rs.Runners) != 1 {
		t.Fatalf("GET /api/runners = %d %s (%v)", code, body, err)
	}
	if r := rs.Runners[0]; r.State != consumer.StateTripped || !strings.Contains(r.Reason, "connection refused") || strings.Contains(r.Reason, "hunter2") {
		t.Errorf("GET /api/runners: %+v; want tripped, the redacted reason", r)
	}
}
