package admin_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/admin"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/retry"
)

// logSink records log lines, to see that nothing panicked.
type logSink struct {
	mu    sync.Mutex
	lines []string
}

func (l *logSink) Enabled(context.Context, slog.Level) bool { return true }
func (l *logSink) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := r.Level.String() + " " + r.Message
	r.Attrs(func(a slog.Attr) bool { s += " " + a.String(); return true })
	l.lines = append(l.lines, s)
	return nil
}
func (l *logSink) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logSink) WithGroup(string) slog.Handler      { return l }
func (l *logSink) panics() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, s := range l.lines {
		if strings.Contains(s, "panic") {
			out = append(out, s)
		}
	}
	return out
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// env is a Supervisor with an "orders" consumer on the memory broker whose
// handler fails permanently for bodies starting with "bad" until fixed is
// set, and a "ticker" runner without counters or dead letters.
type env struct {
	b     *memory.Broker
	sup   *consumer.Supervisor
	fixed atomic.Bool
	seen  sync.Map // bodies handled successfully
}

func newEnv(t testing.TB) *env {
	t.Helper()
	e := &env{b: memory.NewBroker()}
	src, err := e.b.Source("orders", memory.SourceConfig{Prefetch: 4})
	if err != nil {
		t.Fatal(err)
	}
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if strings.HasPrefix(string(m.Body), "bad") && !e.fixed.Load() {
			return retry.Permanent(errors.New("order rejected: <b>no such item</b>"))
		}
		e.seen.Store(string(m.Body), true)
		return nil
	})
	c, err := consumer.New(src, h, consumer.WithLogger(quiet), consumer.WithConcurrency(2))
	if err != nil {
		t.Fatal(err)
	}
	e.sup = &consumer.Supervisor{Logger: quiet}
	if err := e.sup.Add("orders", c); err != nil {
		t.Fatal(err)
	}
	if err := e.sup.Add("ticker", consumer.RunnerFunc(func(ctx context.Context) error { <-ctx.Done(); return nil })); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.sup.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Supervisor.Run = %v", err)
		}
		e.b.Close()
	})
	waitFor(t, "orders running", func() bool { return state(e.sup, "orders") == consumer.StateRunning })
	return e
}

func (e *env) publish(t testing.TB, bodies ...string) {
	t.Helper()
	for _, b := range bodies {
		if err := e.b.Publish(context.Background(), "orders", &broker.Message{ID: b, Body: []byte(b)}); err != nil {
			t.Fatal(err)
		}
	}
}

// deadLetters waits until the orders consumer has n dead letters.
func (e *env) deadLetters(t testing.TB, n int) {
	t.Helper()
	dl := e.b.DeadLettersOf("orders")
	waitFor(t, "dead letters", func() bool {
		c, err := dl.Count(context.Background(), broker.DeadLetterFilter{})
		return err == nil && c == n
	})
}

func state(sup *consumer.Supervisor, name string) consumer.State {
	for _, r := range sup.Health().Runners {
		if r.Name == name {
			return r.State
		}
	}
	return -1
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// server serves h under /admin/ as net/http programs mount it, on a
// loopback httptest server.
func server(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle("/admin/", http.StripPrefix("/admin", h))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func newHandler(t *testing.T, cfg admin.Config) http.Handler {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = quiet
	}
	h, err := admin.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// client is a browser-like client: a cookie jar, no redirects followed
// unless asked.
type client struct {
	t    *testing.T
	base string
	c    *http.Client
}

func newClient(t *testing.T, base string) *client {
	jar, _ := cookiejar.New(nil)
	return &client{t: t, base: base, c: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

func (c *client) do(req *http.Request) (int, http.Header, string) {
	c.t.Helper()
	resp, err := c.c.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

func (c *client) get(path string) (int, string) {
	c.t.Helper()
	req, _ := http.NewRequest("GET", c.base+path, nil)
	code, _, body := c.do(req)
	return code, body
}

// postForm posts a form as a same-origin page does.
func (c *client) postForm(path string, form url.Values) (int, http.Header, string) {
	c.t.Helper()
	req, _ := http.NewRequest("POST", c.base+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	req.Header.Set("Origin", c.base[:strings.Index(c.base[len("http://"):], "/")+len("http://")])
	return c.do(req)
}

// postFollow posts a form and follows the 303 to the result page.
func (c *client) postFollow(path string, form url.Values) (int, string) {
	c.t.Helper()
	code, hdr, body := c.postForm(path, form)
	if code != http.StatusSeeOther {
		c.t.Fatalf("POST %s = %d; want 303 to the result:\n%s", path, code, body)
	}
	return c.get("/" + hdr.Get("Location"))
}

var tokenRE = regexp.MustCompile(`name="csrf_token" value="([^"]+)"`)

// token loads the index page and returns the CSRF token of its forms.
func (c *client) token() string {
	c.t.Helper()
	code, body := c.get("/")
	m := tokenRE.FindStringSubmatch(body)
	if code != http.StatusOK || m == nil {
		c.t.Fatalf("GET / = %d, no CSRF token in:\n%s", code, body)
	}
	return m[1]
}
