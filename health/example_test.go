package health_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/health"
)

// The readiness probe of a Supervisor, served on an httptest recorder as a
// Kubernetes probe would call it: 503 before the runner runs, 200 while it
// runs. In Gin: router.GET("/readyz", gin.WrapH(h.Ready())).
func ExampleHandler_Ready() {
	sup := &consumer.Supervisor{}
	_ = sup.Add("orders", consumer.RunnerFunc(func(ctx context.Context) error {
		<-ctx.Done()
		return nil
	}))
	h, err := health.NewHandler(sup)
	if err != nil {
		panic(err)
	}
	get := func() (int, health.Report) {
		rec := httptest.NewRecorder()
		h.Ready().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		var rep health.Report
		_ = json.Unmarshal(rec.Body.Bytes(), &rep)
		return rec.Code, rep
	}

	code, rep := get()
	fmt.Println(code, rep.Status, rep.Consumers[0].Name, rep.Consumers[0].State)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- sup.Run(ctx) }()
	for !sup.Health().Ready {
		time.Sleep(time.Millisecond)
	}
	code, rep = get()
	fmt.Println(code, rep.Status, rep.Consumers[0].Name, rep.Consumers[0].State)
	cancel()
	<-done
	// Output:
	// 503 unavailable orders starting
	// 200 ok orders running
}
