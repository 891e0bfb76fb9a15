package admin_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/queuekit/queuekit/admin"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
)

// Mount the admin page on a net/http mux at /admin/. Without an Authorize
// hook it answers only loopback requests to a loopback name, as here.
func ExampleNew() {
	b := memory.NewBroker()
	defer b.Close()
	src, _ := b.Source("orders", memory.SourceConfig{})
	c, _ := consumer.New(src, consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil }),
		consumer.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	sup := &consumer.Supervisor{}
	if err := sup.Add("orders", c); err != nil {
		fmt.Println(err)
		return
	}

	h, err := admin.New(admin.Config{
		Supervisor: sup,
		// Authorize: func(r *http.Request) error { … the app's own check … },
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	mux := http.NewServeMux()
	mux.Handle("/admin/", http.StripPrefix("/admin", h))

	srv := httptest.NewServer(mux)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/admin/")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	page, _ := io.ReadAll(resp.Body)
	fmt.Println(resp.StatusCode, strings.Contains(string(page), `data-name="orders"`))
	// Output: 200 true
}
