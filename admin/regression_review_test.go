package admin_test

import (
	"context"
	"errors"
	"fmt"
	"html"
	"net/http"
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

// Regression tests for the hostile review of the admin handler
// (/tmp/review-admin).

// nilErr's Error method panics on a nil receiver: returned as a typed nil.
type nilErr struct{ msg string }

func (e *nilErr) Error() string { return e.msg }

// fakeDL is a user's broker.DeadLetters whose methods do what the test
// sets.
type fakeDL struct {
	count   func(context.Context) (int, error)
	lists   *atomic.Int64
	counts  *atomic.Int64
	release chan struct{}
}

func (d fakeDL) List(context.Context, broker.DeadLetterQuery) (broker.DeadLetterPage, error) {
	if d.lists != nil {
		d.lists.Add(1)
	}
	return broker.DeadLetterPage{}, nil
}
func (d fakeDL) Count(ctx context.Context, _ broker.DeadLetterFilter) (int, error) {
	if d.counts != nil {
		d.counts.Add(1)
	}
	if d.count != nil {
		return d.count(ctx)
	}
	return 0, nil
}
func (fakeDL) Redrive(context.Context, broker.DeadLetterSelection, broker.RedriveOptions) (broker.DeadLetterResult, error) {
	return broker.DeadLetterResult{}, nil
}
func (fakeDL) Purge(context.Context, broker.DeadLetterSelection, bool) (broker.DeadLetterResult, error) {
	return broker.DeadLetterResult{}, nil
}

// fakeRunner is a runner with dead letters (fakeDL) and, when backlog is
// set, a Backlog method.
type fakeRunner struct {
	dl  fakeDL
	run func(context.Context) error
}

func (r fakeRunner) Run(ctx context.Context) error {
	if r.run != nil {
		return r.run(ctx)
	}
	<-ctx.Done()
	return nil
}
func (r fakeRunner) DeadLetters() broker.DeadLetters { return r.dl }

type typedNilBacklogRunner struct{}

func (typedNilBacklogRunner) Run(ctx context.Context) error { <-ctx.Done(); return nil }
func (typedNilBacklogRunner) Backlog(context.Context) (broker.Backlog, error) {
	var e *nilErr
	return broker.Backlog{}, e
}

// supervise runs a Supervisor with the given runners until the test ends.
func supervise(t *testing.T, runners map[string]consumer.Runner) *consumer.Supervisor {
	t.Helper()
	sup := &consumer.Supervisor{Logger: quiet}
	for name, r := range runners {
		if err := sup.Add(name, r); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return sup
}

func localGET(h http.Handler, target string, hdr map[string]string) *httptest.ResponseRecorder {
	req := httptest.NewRequest("GET", target, nil)
	req.RemoteAddr = "127.0.0.1:40000"
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// Review #1: a typed-nil error from Count (or Backlog) was described with
// err.Error() on a goroutine of runners(), outside any recover: GET /
// killed the process (here: the test binary).
func TestReviewTypedNilErrorsDoNotCrash(t *testing.T) {
	sup := supervise(t, map[string]consumer.Runner{
		"count": fakeRunner{dl: fakeDL{count: func(context.Context) (int, error) {
			var e *nilErr
			return 0, e
		}}},
		"backlog": typedNilBacklogRunner{},
	})
	h := newHandler(t, admin.Config{Supervisor: sup})
	for _, p := range []string{"/", "/api/runners", "/runner?runner=count", "/api/deadletters?runner=count"} {
		rec := localGET(h, "http://localhost"+p, nil)
		if !strings.Contains(rec.Body.String(), "typed nil") && p != "/runner?runner=count" && p != "/api/deadletters?runner=count" {
			t.Errorf("GET %s = %d, does not say the error is a typed nil:\n%.2000s", p, rec.Code, rec.Body.String())
		}
	}
}

// Review #4: a Count that ignores its context held GET / for ever;
// Config.Timeout bounds it now, and calls that do not return cannot pile
// up: a runner's broker gets at most a few at once.
func TestReviewIndexBoundedByTimeout(t *testing.T) {
	release := make(chan struct{})
	var counts atomic.Int64
	sup := supervise(t, map[string]consumer.Runner{
		"stuck": fakeRunner{dl: fakeDL{counts: &counts, count: func(context.Context) (int, error) {
			<-release
			return 0, nil
		}}},
	})
	defer close(release)
	h := newHandler(t, admin.Config{Supervisor: sup, Timeout: 50 * time.Millisecond})
	for i := 0; i < 10; i++ {
		done := make(chan *httptest.ResponseRecorder, 1)
		go func() { done <- localGET(h, "http://localhost/api/runners", nil) }()
		select {
		case rec := <-done:
			if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "dead_letters_error") {
				t.Fatalf("GET api/runners = %d %s; want 200 with a dead_letters_error", rec.Code, rec.Body.String())
			}
		case <-time.After(10 * time.Second):
			t.Fatal("GET api/runners with Timeout 50ms has not answered after 10 s: a stuck Count holds the index")
		}
	}
	if n := counts.Load(); n > 8 {
		t.Errorf("10 loads started %d Counts that never return; want at most 8 outstanding", n)
	}
}

// Review #2: cross-site (and same-site) requests are refused, GETs too:
// an <img> on another site made the broker browse its dead letters.
func TestReviewCrossSiteGETRefused(t *testing.T) {
	var lists, counts atomic.Int64
	sup := supervise(t, map[string]consumer.Runner{"dlq": fakeRunner{dl: fakeDL{lists: &lists, counts: &counts}}})
	h := newHandler(t, admin.Config{Supervisor: sup})
	for _, site := range []string{"cross-site", "same-site"} {
		for _, p := range []string{"/", "/runner?runner=dlq&reason=x", "/api/runners", "/api/deadletters?runner=dlq"} {
			rec := localGET(h, "http://localhost:8080"+p, map[string]string{"Sec-Fetch-Site": site, "Sec-Fetch-Mode": "no-cors"})
			if rec.Code != http.StatusForbidden {
				t.Errorf("GET %s with Sec-Fetch-Site %s = %d; want 403", p, site, rec.Code)
			}
		}
	}
	if lists.Load()+counts.Load() != 0 {
		t.Errorf("cross-site GETs reached the broker: List %d, Count %d", lists.Load(), counts.Load())
	}
	for _, site := range []string{"same-origin", "none", ""} {
		rec := localGET(h, "http://localhost:8080/runner?runner=dlq", map[string]string{"Sec-Fetch-Site": site})
		if rec.Code != http.StatusOK {
			t.Errorf("GET runner with Sec-Fetch-Site %q = %d; want 200", site, rec.Code)
		}
	}
}

// Review #5: a runner's last error naming a broker URL showed its password.
func TestReviewPasswordsRedacted(t *testing.T) {
	sup := supervise(t, map[string]consumer.Runner{
		"payments": consumer.RunnerFunc(func(ctx context.Context) error {
			return errors.New(`connect "amqp://svc:S3cretPassw0rd@mq.internal:5672/prod": connection refused`)
		}),
		"dl": fakeRunner{dl: fakeDL{count: func(context.Context) (int, error) {
			return 0, errors.New("dial https://u:Pa%40ssw0rd@api.example/x?password=Hunter2&x=1")
		}}},
	})
	waitFor(t, "payments failed once", func() bool {
		for _, r := range sup.Health().Runners {
			if r.Name == "payments" && r.LastError != "" {
				return true
			}
		}
		return false
	})
	h := newHandler(t, admin.Config{Supervisor: sup})
	for _, p := range []string{"/", "/api/runners", "/api/deadletters?runner=dl", "/runner?runner=dl"} {
		body := localGET(h, "http://localhost"+p, nil).Body.String()
		for _, secret := range []string{"S3cretPassw0rd", "Pa%40ssw0rd", "Hunter2"} {
			if i := strings.Index(body, secret); i >= 0 {
				t.Errorf("GET %s shows a password: …%s…", p, body[max(0, i-40):min(len(body), i+30)])
			}
		}
		if p == "/api/runners" && !strings.Contains(body, "amqp://svc:xxxxx@mq.internal") {
			t.Errorf("GET %s: the redacted URL is not shown:\n%s", p, body)
		}
	}
}

var confirmFieldRE = regexp.MustCompile(`<input type="hidden" name="(id|all|max|reason|runner)" value="([^"]*)">`)

// submitConfirm posts the confirmation page's form as rendered, and
// follows the redirect to the result: the result page, its status and its
// URL.
func submitConfirm(t *testing.T, c *client, tok, op, page string) (int, string, string) {
	t.Helper()
	form := url.Values{"csrf_token": {tok}}
	for _, f := range confirmFieldRE.FindAllStringSubmatch(page, -1) {
		form.Add(f[1], html.UnescapeString(f[2]))
	}
	code, hdr, body := c.postForm("/"+op, form)
	if code != http.StatusSeeOther {
		t.Fatalf("POST /%s = %d; want 303 to the result:\n%s", op, code, body)
	}
	loc := hdr.Get("Location")
	code, body = c.get("/" + loc)
	return code, body, loc
}

// Review #3: "Purge all" acted on dead letters that arrived after the
// confirmation page's dry run; and the result was the POST's answer, so a
// reload repeated the purge.
func TestReviewConfirmActsOnWhatItShowed(t *testing.T) {
	e := newEnv(t)
	e.publish(t, "bad-1", "bad-2", "bad-3")
	e.deadLetters(t, 3)
	srv := server(t, newHandler(t, admin.Config{Supervisor: e.sup}))
	c := newClient(t, srv.URL+"/admin")
	tok := c.token()
	code, _, page := c.postForm("/confirm", url.Values{"csrf_token": {tok}, "runner": {"orders"}, "op": {"purge-all"}})
	if m := doneRE.FindStringSubmatch(page); code != 200 || m == nil || m[1] != "3" {
		t.Fatalf("POST /confirm purge-all = %d; want a dry run of 3:\n%s", code, page)
	}
	e.publish(t, "bad-4", "bad-5") // arrive while the operator reads
	e.deadLetters(t, 5)
	code, res, loc := submitConfirm(t, c, tok, "purge", page)
	if m := doneRE.FindStringSubmatch(res); code != 200 || m == nil || m[1] != "3" {
		t.Fatalf("the confirmation showed 3 to purge; the result (%d) says:\n%s", code, res)
	}
	e.deadLetters(t, 2)
	// Reloading the result shows it again and purges nothing more.
	e.publish(t, "bad-6")
	e.deadLetters(t, 3)
	code, again := c.get("/" + loc)
	if m := doneRE.FindStringSubmatch(again); code != 200 || m == nil || m[1] != "3" {
		t.Errorf("reloading the result = %d:\n%s", code, again)
	}
	e.deadLetters(t, 3)
	// A forged or altered result link is refused.
	if code, _ := c.get("/" + loc + "x"); code != http.StatusBadRequest {
		t.Errorf("an altered result link = %d; want 400", code)
	}
}

// Review #6a: the routes are exact: "api/" and "api/runners/" are not the
// index, and under http.StripPrefix (or with Config.Prefix) no other
// prefix is accepted.
func TestReviewExactRoutes(t *testing.T) {
	e := newEnv(t)
	srv := server(t, newHandler(t, admin.Config{Supervisor: e.sup}))
	c := newClient(t, srv.URL+"/admin")
	for _, p := range []string{"/api/", "/api/runners/", "/runner/", "/x/y/z/api/runners", "/x/runner?runner=orders", "/x/"} {
		if code, body := c.get(p); code != http.StatusNotFound {
			t.Errorf("GET /admin%s = %d; want 404:\n%.300s", p, code, body)
		}
	}
	for _, p := range []string{"/", "/api/runners", "/runner?runner=orders"} {
		if code, _ := c.get(p); code != http.StatusOK {
			t.Errorf("GET /admin%s = %d; want 200", p, code)
		}
	}
	// Mounted without http.StripPrefix, with Config.Prefix.
	h := newHandler(t, admin.Config{Supervisor: e.sup, Prefix: "/admin"})
	for p, want := range map[string]int{"/admin/": 200, "/admin/api/runners": 200, "/admin/x/api/runners": 404, "/other/api/runners": 404} {
		if rec := localGET(h, "http://localhost"+p, nil); rec.Code != want {
			t.Errorf("Prefix /admin: GET %s = %d; want %d", p, rec.Code, want)
		}
	}
}

// Review #6b: Config.SecureCookie marks the CSRF cookie Secure behind a
// proxy that terminates TLS (r.TLS nil).
func TestReviewSecureCookie(t *testing.T) {
	e := newEnv(t)
	for _, secure := range []bool{false, true} {
		h := newHandler(t, admin.Config{Supervisor: e.sup, SecureCookie: secure})
		rec := localGET(h, "http://localhost/", nil)
		cookie := rec.Header().Get("Set-Cookie")
		if strings.Contains(cookie, "; Secure") != secure {
			t.Errorf("SecureCookie %v: Set-Cookie %q", secure, cookie)
		}
	}
}

// Review #6d: whole bodies come only on short pages, and a page's bodies
// are capped in all.
func TestReviewDeadLetterBodiesBounded(t *testing.T) {
	e := newEnv(t)
	e.publish(t, "bad-"+strings.Repeat("x", 5000))
	e.deadLetters(t, 1)
	h := newHandler(t, admin.Config{Supervisor: e.sup})
	rec := localGET(h, "http://localhost/api/deadletters?runner=orders&body_limit=-1&limit=10000", nil)
	if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "needs limit at most 100") {
		t.Errorf("whole bodies with limit 10000 = %d %s; want 400", rec.Code, rec.Body.String())
	}
	rec = localGET(h, "http://localhost/api/deadletters?runner=orders&body_limit=-1&limit=100", nil)
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"body_size": 5004`) {
		t.Errorf("whole bodies with limit 100 = %d %.500s; want 200", rec.Code, rec.Body.String())
	}
}

// Review #6e: a form too large to read says why.
func TestReviewHugeFormSaysWhy(t *testing.T) {
	e := newEnv(t)
	srv := server(t, newHandler(t, admin.Config{Supervisor: e.sup}))
	c := newClient(t, srv.URL+"/admin")
	tok := c.token()
	form := url.Values{"csrf_token": {tok}, "runner": {"orders"}, "op": {"redrive"}}
	for i := 0; i < 100000; i++ {
		form.Add("id", fmt.Sprintf("id-%06d", i))
	}
	code, _, body := c.postForm("/confirm", form)
	if code != http.StatusBadRequest || !strings.Contains(body, "too large") || !strings.Contains(body, "at most") {
		t.Errorf("POST /confirm with 100,000 ids = %d %q; want 400 saying the form is too large", code, body)
	}
}

// Past 1,000 dead letters the confirm form carries the filter and Max (the
// dry run's count) instead of the ids, and the page says so.
func TestReviewConfirmManyCarriesMax(t *testing.T) {
	e := newEnv(t)
	bodies := make([]string, 1001)
	for i := range bodies {
		bodies[i] = fmt.Sprintf("bad-%04d", i)
	}
	e.publish(t, bodies...)
	e.deadLetters(t, 1001)
	srv := server(t, newHandler(t, admin.Config{Supervisor: e.sup}))
	c := newClient(t, srv.URL+"/admin")
	tok := c.token()
	code, _, page := c.postForm("/confirm", url.Values{"csrf_token": {tok}, "runner": {"orders"}, "op": {"purge-all"}})
	if code != 200 || !strings.Contains(page, `id="byfilter"`) || !strings.Contains(page, `name="max" value="1001"`) || strings.Contains(page, `name="id"`) {
		t.Fatalf("POST /confirm purge-all of 1001 = %d; want the filter and max 1001 carried, and said:\n%.3000s", code, page)
	}
	e.publish(t, "bad-late")
	e.deadLetters(t, 1002)
	code, res, _ := submitConfirm(t, c, tok, "purge", page)
	if m := doneRE.FindStringSubmatch(res); code != 200 || m == nil || m[1] != "1001" {
		t.Fatalf("the result (%d) of confirming 1001:\n%s", code, res)
	}
	e.deadLetters(t, 1)
}

// Concurrent requests to a slow (not stuck) broker wait for a slot rather
// than being refused: the per-runner cap is for calls that do not return.
func TestReviewSlowBrokerCallsWaitForASlot(t *testing.T) {
	sup := supervise(t, map[string]consumer.Runner{
		"slow": fakeRunner{dl: fakeDL{count: func(context.Context) (int, error) {
			time.Sleep(20 * time.Millisecond)
			return 7, nil
		}}},
	})
	h := newHandler(t, admin.Config{Supervisor: sup})
	var wg sync.WaitGroup
	for i := 0; i < 24; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec := localGET(h, "http://localhost/api/runners", nil)
			if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"dead_letters": 7`) {
				t.Errorf("GET api/runners (24 at once, Count taking 20ms) = %d %.400s", rec.Code, rec.Body.String())
			}
		}()
	}
	wg.Wait()
}

// A dead letter's reason (and its reason header, in the JSON API) with a
// broker URL in it shows no password either.
func TestReviewDeadLetterReasonRedacted(t *testing.T) {
	b := memory.NewBroker()
	defer b.Close()
	src, err := b.Source("jobs", memory.SourceConfig{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := consumer.New(src, consumer.HandlerFunc(func(context.Context, *broker.Message) error {
		return retry.Permanent(errors.New("post to https://bot:T0pSecret@hooks.example/x failed"))
	}), consumer.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	sup := supervise(t, map[string]consumer.Runner{"jobs": c})
	if err := b.Publish(context.Background(), "jobs", &broker.Message{ID: "j1", Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the dead letter", func() bool {
		n, err := b.DeadLettersOf("jobs").Count(context.Background(), broker.DeadLetterFilter{})
		return err == nil && n == 1
	})
	h := newHandler(t, admin.Config{Supervisor: sup})
	for _, p := range []string{"/runner?runner=jobs", "/api/deadletters?runner=jobs"} {
		body := localGET(h, "http://localhost"+p, nil).Body.String()
		if strings.Contains(body, "T0pSecret") || !strings.Contains(body, "bot:xxxxx@hooks.example") {
			t.Errorf("GET %s: the password is shown, or the redacted URL is not:\n%.3000s", p, body)
		}
	}
}
