package admin_test

import (
	"context"
	"encoding/json"
	"errors"
	"html"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/queuekit/queuekit/admin"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

func TestNewRefusesInvalidConfig(t *testing.T) {
	sup := &consumer.Supervisor{}
	for _, tc := range []struct {
		name string
		cfg  admin.Config
	}{
		{"no Supervisor", admin.Config{}},
		{"a negative Timeout", admin.Config{Supervisor: sup, Timeout: -1}},
		{"a negative PageSize", admin.Config{Supervisor: sup, PageSize: -1}},
		{"a PageSize over the list limit", admin.Config{Supervisor: sup, PageSize: broker.MaxListLimit + 1}},
	} {
		if h, err := admin.New(tc.cfg); !errors.Is(err, broker.ErrInvalidConfig) || h != nil {
			t.Errorf("New with %s = %v, %v; want nil and an error wrapping ErrInvalidConfig", tc.name, h, err)
		}
	}
}

// Without an Authorize hook only loopback requests to a loopback name are
// served; with one, the hook alone decides.
func TestAuthorization(t *testing.T) {
	e := newEnv(t)
	noHook := newHandler(t, admin.Config{Supervisor: e.sup})
	for _, tc := range []struct {
		name, remote, host string
		want               int
	}{
		{"loopback to 127.0.0.1", "127.0.0.1:5555", "127.0.0.1:8080", 200},
		{"loopback to localhost", "127.0.0.1:5555", "LOCALHOST:8080", 200},
		{"IPv6 loopback to [::1]", "[::1]:5555", "[::1]:8080", 200},
		{"another machine", "203.0.113.7:5555", "127.0.0.1:8080", 403},
		{"another machine naming localhost", "10.1.2.3:5555", "localhost", 403},
		{"a DNS-rebinding page: loopback, its own Host", "127.0.0.1:5555", "attacker.example:8080", 403},
		{"loopback to a name that merely starts with localhost", "127.0.0.1:5555", "localhost.attacker.example", 403},
		{"an unparsable remote address", "garbage", "localhost", 403},
	} {
		for _, path := range []string{"/", "/api/runners", "/runner?runner=orders"} {
			req := httptest.NewRequest("GET", path, nil)
			req.RemoteAddr, req.Host = tc.remote, tc.host
			rec := httptest.NewRecorder()
			noHook.ServeHTTP(rec, req)
			if rec.Code != tc.want {
				t.Errorf("without a hook, %s: GET %s = %d %s; want %d", tc.name, path, rec.Code, rec.Body, tc.want)
			}
		}
	}

	// The hook decides, whatever the address; its error is not shown.
	hook := newHandler(t, admin.Config{Supervisor: e.sup, Authorize: func(r *http.Request) error {
		if r.Header.Get("Authorization") != "Bearer ok" {
			return errors.New("token 'hunter2' is wrong")
		}
		return nil
	}})
	for _, tc := range []struct {
		name, auth string
		want       int
	}{{"a request the hook allows", "Bearer ok", 200}, {"a request the hook denies", "Bearer nope", 403}} {
		for _, path := range []string{"/", "/api/runners"} {
			req := httptest.NewRequest("GET", path, nil)
			req.RemoteAddr, req.Host = "203.0.113.7:5555", "admin.example"
			req.Header.Set("Authorization", tc.auth)
			rec := httptest.NewRecorder()
			hook.ServeHTTP(rec, req)
			if rec.Code != tc.want || strings.Contains(rec.Body.String(), "hunter2") {
				t.Errorf("%s: GET %s = %d %s; want %d, without the hook's error text", tc.name, path, rec.Code, rec.Body, tc.want)
			}
		}
	}
	// A denied POST changes nothing even with a valid token.
	srv := server(t, newHandler(t, admin.Config{Supervisor: e.sup, Authorize: func(r *http.Request) error {
		if r.Method == http.MethodPost {
			return errors.New("read-only")
		}
		return nil
	}}))
	c := newClient(t, srv.URL+"/admin")
	tok := c.token()
	if code, _, body := c.postForm("/pause", url.Values{"csrf_token": {tok}, "runner": {"orders"}}); code != 403 {
		t.Errorf("POST pause denied by the hook = %d %s; want 403", code, body)
	}
	if st := state(e.sup, "orders"); st != consumer.StateRunning {
		t.Errorf("orders is %v after a denied pause; want running", st)
	}
	// A panicking hook refuses.
	panicky := newHandler(t, admin.Config{Supervisor: e.sup, Authorize: func(*http.Request) error { panic("boom") }})
	rec := httptest.NewRecorder()
	panicky.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	if rec.Code != 403 {
		t.Errorf("a panicking Authorize: GET / = %d; want 403", rec.Code)
	}
}

// Every state-changing request needs the CSRF token (form field or header,
// matching the cookie, signed by this handler) and must not come from
// another origin.
func TestStateChangingRequestsNeedCSRFAndSameOrigin(t *testing.T) {
	e := newEnv(t)
	e.publish(t, "bad-1")
	e.deadLetters(t, 1)
	srv := server(t, newHandler(t, admin.Config{Supervisor: e.sup}))
	c := newClient(t, srv.URL+"/admin")
	tok := c.token()
	other := newClient(t, server(t, newHandler(t, admin.Config{Supervisor: e.sup})).URL+"/admin")
	otherTok := other.token() // valid for another handler (another key)

	forms := map[string]url.Values{
		"/pause":   {"runner": {"orders"}},
		"/resume":  {"runner": {"orders"}},
		"/confirm": {"runner": {"orders"}, "op": {"redrive-all"}},
		"/redrive": {"runner": {"orders"}, "all": {"1"}},
		"/purge":   {"runner": {"orders"}, "all": {"1"}},
	}
	for path, form := range forms {
		for _, tc := range []struct {
			name  string
			token string
		}{{"no token", ""}, {"a forged token", "AAAAAAAAAAAAAAAAAAAAAA.AAAA"}, {"another handler's token", otherTok}, {"a token not matching the cookie", tok + "x"}} {
			f := url.Values{}
			for k, v := range form {
				f[k] = v
			}
			if tc.token != "" {
				f.Set("csrf_token", tc.token)
			}
			if code, _, body := c.postForm(path, f); code != http.StatusForbidden {
				t.Errorf("POST %s with %s = %d %s; want 403", path, tc.name, code, body)
			}
		}
		// The right token from another origin.
		f := url.Values{"csrf_token": {tok}}
		for k, v := range form {
			f[k] = v
		}
		req, _ := http.NewRequest("POST", c.base+path, strings.NewReader(f.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Sec-Fetch-Site", "cross-site")
		if code, _, body := c.do(req); code != http.StatusForbidden {
			t.Errorf("cross-site POST %s with a valid token = %d %s; want 403", path, code, body)
		}
		req, _ = http.NewRequest("POST", c.base+path, strings.NewReader(f.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", "https://attacker.example")
		if code, _, body := c.do(req); code != http.StatusForbidden {
			t.Errorf("POST %s with a valid token and Origin attacker.example = %d %s; want 403", path, code, body)
		}
	}
	// The JSON API: the header, not a form field.
	for _, path := range []string{"/api/pause", "/api/redrive", "/api/purge"} {
		for _, tc := range []struct{ name, token string }{{"no token", ""}, {"another handler's token", otherTok}} {
			req, _ := http.NewRequest("POST", c.base+path, strings.NewReader(`{"runner":"orders","all":true}`))
			req.Header.Set("Content-Type", "application/json")
			if tc.token != "" {
				req.Header.Set("X-CSRF-Token", tc.token)
			}
			code, _, body := c.do(req)
			if code != http.StatusForbidden || !strings.Contains(body, `"error"`) {
				t.Errorf("POST %s with %s = %d %s; want 403 with a JSON error", path, tc.name, code, body)
			}
		}
	}
	// Nothing changed.
	if st := state(e.sup, "orders"); st != consumer.StateRunning {
		t.Errorf("orders is %v; want running", st)
	}
	e.deadLetters(t, 1)
	// GET never changes anything: a state-changing route refuses it.
	if code, _ := c.get("/pause?runner=orders"); code != http.StatusMethodNotAllowed {
		t.Errorf("GET /pause = %d; want 405", code)
	}
}

// The index shows every runner with its state, counters and dead letters;
// the runner page shows each dead letter with its reason, escaped.
func TestPagesRender(t *testing.T) {
	e := newEnv(t)
	e.publish(t, "good-1", "bad-<script>alert(1)</script>")
	e.deadLetters(t, 1)
	waitFor(t, "good-1 handled", func() bool { _, ok := e.seen.Load("good-1"); return ok })
	srv := server(t, newHandler(t, admin.Config{Supervisor: e.sup, Title: "shop"}))
	c := newClient(t, srv.URL+"/admin")
	code, body := c.get("/")
	if code != 200 {
		t.Fatalf("GET / = %d %s", code, body)
	}
	for _, want := range []string{"<h1>shop</h1>", `data-name="orders"`, `data-name="ticker"`, `class="state running"`,
		`href="runner?runner=orders">1</a>`, `action="pause"`} {
		if !strings.Contains(body, want) {
			t.Errorf("GET / lacks %q:\n%s", want, body)
		}
	}
	code, body = c.get("/runner?runner=orders")
	if code != 200 {
		t.Fatalf("GET /runner = %d %s", code, body)
	}
	for _, want := range []string{"Dead letters of orders", html.EscapeString("order rejected: <b>no such item</b>"),
		"&lt;script&gt;", `id="redrive-selected"`, `1 dead letter.`} {
		if !strings.Contains(body, want) {
			t.Errorf("GET /runner?runner=orders lacks %q:\n%s", want, body)
		}
	}
	if strings.Contains(body, "<script>") || strings.Contains(body, "<b>no such") {
		t.Errorf("the runner page has unescaped message text:\n%s", body)
	}
	// Filters: a reason that matches, one that does not.
	if _, body := c.get("/runner?runner=orders&reason=NO+SUCH"); !strings.Contains(body, "1 dead letter whose reason") {
		t.Errorf("reason filter NO SUCH: want the dead letter:\n%s", body)
	}
	if _, body := c.get("/runner?runner=orders&reason=timeout"); !strings.Contains(body, "No dead letters match the filter") {
		t.Errorf("reason filter timeout: want none:\n%s", body)
	}
	// A runner without dead letters, an unknown one, bad paging.
	for path, want := range map[string]int{"/runner?runner=ticker": 409, "/runner?runner=nope": 404, "/runner": 400,
		"/runner?runner=orders&limit=x": 400, "/runner?runner=orders&limit=0": 400, "/nope": 404, "/api/nope": 404} {
		if code, body := c.get(path); code != want {
			t.Errorf("GET %s = %d %s; want %d", path, code, body, want)
		}
	}
	// The JSON API says the same.
	code, body = c.get("/api/runners")
	var rs struct {
		Runners   []admin.Runner `json:"runners"`
		CSRFToken string         `json:"csrf_token"`
	}
	if err := json.Unmarshal([]byte(body), &rs); err != nil || code != 200 || len(rs.Runners) != 2 || rs.CSRFToken == "" {
		t.Fatalf("GET /api/runners = %d %s (%v); want 2 runners and a token", code, body, err)
	}
	o := rs.Runners[0]
	if o.Name != "orders" || o.Stats == nil || o.Stats.Handled != 1 || o.Stats.Failed != 1 || o.Stats.DeadLettered != 1 ||
		o.DeadLetters == nil || *o.DeadLetters != 1 || o.Backlog == nil {
		t.Errorf("GET /api/runners: orders = %+v; want 1 handled, 1 failed, 1 dead letter, a backlog", o)
	}
	if rs.Runners[1].Stats != nil || rs.Runners[1].HasDeadLetters {
		t.Errorf("GET /api/runners: ticker = %+v; want no stats, no dead letters", rs.Runners[1])
	}
	code, body = c.get("/api/deadletters?runner=orders")
	var list admin.DeadLetterList
	if err := json.Unmarshal([]byte(body), &list); err != nil || code != 200 || list.Count != 1 || len(list.Items) != 1 ||
		list.Items[0].Reason.Err != "order rejected: <b>no such item</b>" || !list.Items[0].Reason.Permanent {
		t.Errorf("GET /api/deadletters = %d %s; want the dead letter with its reason", code, body)
	}
	for path, want := range map[string]int{"/api/deadletters?runner=nope": 404, "/api/deadletters?runner=ticker": 409, "/api/deadletters": 400} {
		code, body := c.get(path)
		if code != want || !strings.HasPrefix(body, "{") {
			t.Errorf("GET %s = %d %s; want %d with a JSON error", path, code, body, want)
		}
	}
}

// Pause and resume through the page's buttons.
func TestPauseResumeThroughThePage(t *testing.T) {
	e := newEnv(t)
	srv := server(t, newHandler(t, admin.Config{Supervisor: e.sup}))
	c := newClient(t, srv.URL+"/admin")
	tok := c.token()
	code, h, body := c.postForm("/pause", url.Values{"csrf_token": {tok}, "runner": {"orders"}})
	if code != http.StatusSeeOther || h.Get("Location") != "./" {
		t.Fatalf("POST /pause = %d %s (Location %q); want 303 to ./", code, body, h.Get("Location"))
	}
	if st := state(e.sup, "orders"); st != consumer.StatePaused {
		t.Fatalf("after pause: %v; want paused", st)
	}
	if _, body := c.get("/"); !strings.Contains(body, `class="state paused"`) || !strings.Contains(body, `action="resume"`) {
		t.Errorf("the index after pause shows no paused consumer with a resume button:\n%s", body)
	}
	if code, _, body := c.postForm("/resume", url.Values{"csrf_token": {tok}, "runner": {"orders"}}); code != http.StatusSeeOther {
		t.Fatalf("POST /resume = %d %s; want 303", code, body)
	}
	if st := state(e.sup, "orders"); st != consumer.StateRunning {
		t.Errorf("after resume: %v; want running", st)
	}
	for _, tc := range []struct {
		runner string
		want   int
	}{{"nope", 404}, {"ticker", 409}, {"", 400}} {
		if code, _, body := c.postForm("/pause", url.Values{"csrf_token": {tok}, "runner": {tc.runner}}); code != tc.want {
			t.Errorf("POST /pause runner=%q = %d %s; want %d", tc.runner, code, body, tc.want)
		}
	}
}

var doneRE = regexp.MustCompile(`<b id="(?:done|would)">(\d+)</b>`)

// The operator's workflow on the page: a message fails → see why → fix →
// redrive (select, confirm with a dry run, do it) → processed; then purge
// the rest.
func TestRedriveAndPurgeThroughThePage(t *testing.T) {
	e := newEnv(t)
	e.publish(t, "bad-1", "bad-2", "bad-3")
	e.deadLetters(t, 3)
	srv := server(t, newHandler(t, admin.Config{Supervisor: e.sup}))
	c := newClient(t, srv.URL+"/admin")
	tok := c.token()
	page, err := e.b.DeadLettersOf("orders").List(context.Background(), broker.DeadLetterQuery{})
	if err != nil || len(page.Items) != 3 {
		t.Fatalf("List = %v, %v", page, err)
	}
	first := page.Items[0].ID

	// Confirm shows the plan and a dry run, and changes nothing.
	code, _, body := c.postForm("/confirm", url.Values{"csrf_token": {tok}, "runner": {"orders"}, "op": {"redrive"}, "id": {first}})
	if m := doneRE.FindStringSubmatch(body); code != 200 || m == nil || m[1] != "1" || !strings.Contains(body, `id="confirm"`) {
		t.Fatalf("POST /confirm = %d; want a dry run of 1 and a confirm button:\n%s", code, body)
	}
	e.deadLetters(t, 3)
	// Nothing selected: say so.
	if code, _, _ := c.postForm("/confirm", url.Values{"csrf_token": {tok}, "runner": {"orders"}, "op": {"redrive"}}); code != 400 {
		t.Errorf("POST /confirm without a selection = %d; want 400", code)
	}

	e.fixed.Store(true)
	code, body = c.postFollow("/redrive", url.Values{"csrf_token": {tok}, "runner": {"orders"}, "id": {first}})
	if m := doneRE.FindStringSubmatch(body); code != 200 || m == nil || m[1] != "1" {
		t.Fatalf("POST /redrive = %d; want 1 redriven:\n%s", code, body)
	}
	e.deadLetters(t, 2)
	waitFor(t, "the redriven order handled", func() bool {
		n := 0
		e.seen.Range(func(k, _ any) bool { n++; return true })
		return n == 1
	})

	// Redriving it again: not found.
	code, body = c.postFollow("/redrive", url.Values{"csrf_token": {tok}, "runner": {"orders"}, "id": {first}})
	if code != 404 || !strings.Contains(body, "not found") {
		t.Errorf("POST /redrive of a redriven id = %d; want 404 saying not found:\n%s", code, body)
	}

	// Purge all: confirm, then do.
	code, _, body = c.postForm("/confirm", url.Values{"csrf_token": {tok}, "runner": {"orders"}, "op": {"purge-all"}})
	if m := doneRE.FindStringSubmatch(body); code != 200 || m == nil || m[1] != "2" || !strings.Contains(body, "deleted for good") {
		t.Fatalf("POST /confirm purge-all = %d; want a dry run of 2:\n%s", code, body)
	}
	code, body = c.postFollow("/purge", url.Values{"csrf_token": {tok}, "runner": {"orders"}, "all": {"1"}})
	if m := doneRE.FindStringSubmatch(body); code != 200 || m == nil || m[1] != "2" {
		t.Fatalf("POST /purge = %d; want 2 purged:\n%s", code, body)
	}
	e.deadLetters(t, 0)
}

// The JSON API redrives and purges with the token in a header.
func TestJSONAPI(t *testing.T) {
	e := newEnv(t)
	e.publish(t, "bad-1", "bad-2")
	e.deadLetters(t, 2)
	srv := server(t, newHandler(t, admin.Config{Supervisor: e.sup}))
	c := newClient(t, srv.URL+"/admin")
	req, _ := http.NewRequest("GET", c.base+"/api/runners", nil)
	_, h, _ := c.do(req)
	tok := h.Get("X-CSRF-Token")
	post := func(path, ctype, body string) (int, string) {
		req, _ := http.NewRequest("POST", c.base+path, strings.NewReader(body))
		req.Header.Set("Content-Type", ctype)
		req.Header.Set("X-CSRF-Token", tok)
		code, _, b := c.do(req)
		return code, b
	}
	for _, tc := range []struct {
		path, ctype, body string
		want              int
	}{
		{"/api/redrive", "text/plain", `{"runner":"orders","all":true}`, 415},
		{"/api/redrive", "application/json", `{"runner":"orders","all":true`, 400},
		{"/api/redrive", "application/json", `{"runner":"orders","all":true,"bogus":1}`, 400},
		{"/api/redrive", "application/json", `{"runner":"orders","all":true} {}`, 400},
		{"/api/redrive", "application/json", `{"runner":"orders"}`, 400}, // empty selection
		{"/api/redrive", "application/json", `{"runner":"orders","all":true,"max":-1}`, 400},
		{"/api/redrive", "application/json", `{"all":true}`, 400},
		{"/api/redrive", "application/json", `{"runner":"nope","all":true}`, 404},
		{"/api/redrive", "application/json", `{"runner":"ticker","all":true}`, 409},
		{"/api/purge", "application/json", `{"runner":"orders","ids":["nope"]}`, 404},
		{"/api/pause", "application/json", `{"runner":"ticker"}`, 409},
		{"/api/redrive", "application/json; charset=utf-8", `{"runner":"orders","all":true,"dry_run":true}`, 200},
	} {
		code, body := post(tc.path, tc.ctype, tc.body)
		if code != tc.want || !strings.HasPrefix(body, "{") {
			t.Errorf("POST %s %s %s = %d %s; want %d with JSON", tc.path, tc.ctype, tc.body, code, body, tc.want)
		}
	}
	e.deadLetters(t, 2)
	e.fixed.Store(true)
	code, body := post("/api/redrive", "application/json", `{"runner":"orders","all":true,"max":1}`)
	var res admin.Result
	if err := json.Unmarshal([]byte(body), &res); err != nil || code != 200 || len(res.Result.Done) != 1 || res.Error != "" {
		t.Fatalf("POST /api/redrive max 1 = %d %s; want 1 done", code, body)
	}
	e.deadLetters(t, 1)
	if code, body := post("/api/pause", "application/json", `{"runner":"orders"}`); code != 200 || state(e.sup, "orders") != consumer.StatePaused {
		t.Errorf("POST /api/pause = %d %s; want 200 and orders paused", code, body)
	}
	if code, body := post("/api/resume", "application/json", `{"runner":"orders"}`); code != 200 || state(e.sup, "orders") != consumer.StateRunning {
		t.Errorf("POST /api/resume = %d %s; want 200 and orders running", code, body)
	}
}

// The handler works wherever it is mounted: with http.StripPrefix, without
// (the whole path reaches it, as with gin.WrapH), at the root, nested.
func TestMountPrefixAgnostic(t *testing.T) {
	e := newEnv(t)
	e.publish(t, "bad-1")
	e.deadLetters(t, 1)
	for _, tc := range []struct {
		name, pattern, strip, base string
	}{
		{"StripPrefix /admin", "/admin/", "/admin", "/admin"},
		{"StripPrefix /admin/", "/admin/", "/admin/", "/admin"},
		{"the whole path, as gin.WrapH passes it", "/ops/admin/", "", "/ops/admin"},
		{"at the root", "/", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHandler(t, admin.Config{Supervisor: e.sup})
			if tc.strip != "" {
				h = http.StripPrefix(tc.strip, h)
			}
			mux := http.NewServeMux()
			mux.Handle(tc.pattern, h)
			srv := httptest.NewServer(mux)
			defer srv.Close()
			c := newClient(t, srv.URL+tc.base)
			tok := c.token()
			if code, body := c.get("/runner?runner=orders"); code != 200 || !strings.Contains(body, "no such item") {
				t.Errorf("GET %s/runner = %d; want the dead letter:\n%s", tc.base, code, body)
			}
			if code, _ := c.get("/api/runners"); code != 200 {
				t.Errorf("GET %s/api/runners = %d; want 200", tc.base, code)
			}
			// The cookie is scoped to the mount point and reaches the
			// form posts.
			code, _, body := c.postForm("/confirm", url.Values{"csrf_token": {tok}, "runner": {"orders"}, "op": {"redrive-all"}})
			if code != 200 || !strings.Contains(body, `id="confirm"`) {
				t.Errorf("POST %s/confirm = %d; want the confirmation page:\n%s", tc.base, code, body)
			}
		})
	}
	// Asked without the slash under StripPrefix("/admin"): sent to it.
	mux := http.NewServeMux()
	mux.Handle("/admin", http.StripPrefix("/admin", newHandler(t, admin.Config{Supervisor: e.sup})))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	c := newClient(t, srv.URL)
	req, _ := http.NewRequest("GET", srv.URL+"/admin", nil)
	if code, h, _ := c.do(req); code != http.StatusMovedPermanently || h.Get("Location") != "admin/" {
		t.Errorf("GET /admin = %d Location %q; want 301 to admin/", code, h.Get("Location"))
	}
}
