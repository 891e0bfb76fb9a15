package main

// Tests of the admin page as the service mounts it (package admin at
// /admin/), including the regressions of the outside review of issue 10:
// the admin endpoints could be triggered cross-site (a page's plain form or
// fetch paused a consumer) and answered any Host (a DNS-rebinding page
// could read the admin report).

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
)

// adminClient talks to the admin API as a same-origin client: it holds the
// CSRF cookie and token from a GET of /admin/api/runners, and sends both
// with each POST (also to another Host: the tests send the cookie where a
// browser would not, to show that the Host check alone refuses).
type adminClient struct {
	t      *testing.T
	base   string
	token  string
	cookie *http.Cookie
	auth   string // Authorization header, if any
}

func newAdminClient(t *testing.T, base, auth string) *adminClient {
	t.Helper()
	a := &adminClient{t: t, base: base, auth: auth}
	req, _ := http.NewRequest("GET", base+"/admin/api/runners", nil)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for _, c := range resp.Cookies() {
		if c.Name == "queuekit_admin_csrf" {
			a.cookie = c
		}
	}
	if a.token = resp.Header.Get("X-CSRF-Token"); resp.StatusCode != http.StatusOK || a.token == "" || a.cookie == nil || a.cookie.Path != "/admin/" {
		t.Fatalf("GET /admin/api/runners = %d, token %q, cookie %v; want 200, a CSRF token and its cookie for /admin/", resp.StatusCode, a.token, a.cookie)
	}
	return a
}

// post sends a JSON POST to the admin API with the given extra headers
// (a header with an empty value is removed: "Cookie" drops the CSRF
// cookie) and returns the status and body.
func (a *adminClient) post(path, host, body string, headers map[string]string) (int, string) {
	a.t.Helper()
	req, _ := http.NewRequest("POST", a.base+path, strings.NewReader(body))
	if host != "" {
		req.Host = host
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-CSRF-Token", a.token)
	req.AddCookie(a.cookie)
	if a.auth != "" {
		req.Header.Set("Authorization", a.auth)
	}
	for k, v := range headers {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// pause and resume post to the admin API for the named consumer.
func (a *adminClient) pause(name string) (int, string) {
	return a.post("/admin/api/pause", "", `{"runner": "`+name+`"}`, nil)
}

func (a *adminClient) resume(name string) (int, string) {
	return a.post("/admin/api/resume", "", `{"runner": "`+name+`"}`, nil)
}

// adminRequest sends one request to the service at base with the given
// Host (empty: the address of base) and headers, and returns the status
// and the body.
func adminRequest(t *testing.T, method, base, path, host string, headers map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// resumeIfPaused reports (as an error) a paused orders consumer and resumes
// it, so that the next case starts from a running one.
func resumeIfPaused(t *testing.T, s *service, what string) {
	t.Helper()
	if st := consumerState(t, s); st == "paused" {
		t.Errorf("%s: the orders consumer is paused; want it running", what)
		if err := s.sup.Resume(context.Background(), "orders"); err != nil {
			t.Fatal(err)
		}
	}
}

// consumerState is the orders consumer's state as the health report has it.
func consumerState(t *testing.T, s *service) string {
	t.Helper()
	for _, c := range s.probes.Report().Consumers {
		if c.Name == "orders" {
			return c.State
		}
	}
	t.Fatal("no orders consumer in the report")
	return ""
}

// A cross-site request cannot pause a consumer, with or without
// ADMIN_TOKEN, even carrying a valid CSRF token and cookie: not a browser's
// cross-site fetch (Sec-Fetch-Site), not an older browser's (Origin of
// another site); and a request without the token (a plain HTML form from
// another site cannot know it) is refused too.
func TestAdminRefusesCrossSiteRequests(t *testing.T) {
	const token = "s3cret-token"
	for _, withToken := range []bool{false, true} {
		cfg := testConfig(t)
		name, auth := "without ADMIN_TOKEN", ""
		if withToken {
			cfg.adminToken, name, auth = token, "with ADMIN_TOKEN", "Bearer "+token
		}
		t.Run(name, func(t *testing.T) {
			base, s, _ := startInProcess(t, cfg)
			waitReady(t, base, http.StatusOK)
			a := newAdminClient(t, base, auth)
			cases := []struct {
				name    string
				headers map[string]string
			}{
				{"the reviewer's request: a cross-site text/plain POST", map[string]string{
					"Origin": "https://attacker.example", "Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"}},
				{"a cross-site request even with a JSON content type", map[string]string{"Sec-Fetch-Site": "cross-site"}},
				{"a same-site (another port or subdomain) request", map[string]string{"Sec-Fetch-Site": "same-site"}},
				{"an older browser's request from another origin", map[string]string{"Origin": "https://attacker.example"}},
				{"an opaque (null) origin, as from a sandboxed frame", map[string]string{"Origin": "null"}},
				{"a form post without the CSRF token", map[string]string{
					"Content-Type": "application/x-www-form-urlencoded", "X-CSRF-Token": ""}},
				{"a JSON post with the token but not its cookie", map[string]string{"Cookie": ""}},
				{"a JSON post without the CSRF token", map[string]string{"X-CSRF-Token": ""}},
				{"a JSON post with a forged CSRF token", map[string]string{"X-CSRF-Token": "AAAAAAAAAAAAAAAAAAAAAA.AAAA"}},
				{"a text/plain post with the CSRF token", map[string]string{"Content-Type": "text/plain"}},
			}
			for _, tc := range cases {
				code, body := a.post("/admin/api/pause", "", `{"runner": "orders"}`, tc.headers)
				if code != http.StatusForbidden && code != http.StatusUnsupportedMediaType {
					t.Errorf("%s: POST /admin/api/pause = %d %s; want 403 (415 for a wrong content type)", tc.name, code, body)
				}
				resumeIfPaused(t, s, tc.name)
			}
		})
	}
}

// Without ADMIN_TOKEN, the admin page answers only requests addressed to a
// loopback name: a DNS-rebinding page (attacker.example resolved to
// 127.0.0.1) reaches the loopback interface but carries its own Host.
func TestAdminRefusesForeignHostWithoutToken(t *testing.T) {
	base, s, _ := startInProcess(t, testConfig(t))
	waitReady(t, base, http.StatusOK)
	a := newAdminClient(t, base, "")
	_, port, _ := strings.Cut(strings.TrimPrefix(base, "http://"), ":")
	for _, host := range []string{"attacker.example", "attacker.example:" + port, "localhost.attacker.example:" + port,
		"127.0.0.1.attacker.example", "10.0.0.1:" + port, "[::2]:" + port, "localhostx:" + port} {
		for _, path := range []string{"/admin/", "/admin/api/runners", "/admin/runner?runner=orders"} {
			if code, body := adminRequest(t, "GET", base, path, host, nil); code != http.StatusForbidden {
				t.Errorf("GET %s with Host %s = %d %s; want 403", path, host, code, body)
			}
		}
		// The same-origin headers a rebinding page's fetch would carry.
		h := map[string]string{"Sec-Fetch-Site": "same-origin", "Origin": "http://" + host}
		if code, body := a.post("/admin/api/pause", host, `{"runner": "orders"}`, h); code != http.StatusForbidden {
			t.Errorf("POST /admin/api/pause with Host %s = %d %s; want 403", host, code, body)
		}
		resumeIfPaused(t, s, "Host "+host)
	}
	// The other endpoints do not care about Host.
	json := map[string]string{"Content-Type": "application/json"}
	if code, body := adminRequest(t, "POST", base, "/orders", "attacker.example", json); code == http.StatusForbidden {
		t.Errorf("POST /orders with a foreign Host = %d %s; want the orders API unaffected", code, body)
	}
}

// What an operator does on the machine, and what a same-origin page does,
// still works, to any loopback name.
func TestAdminAcceptsLoopbackRequests(t *testing.T) {
	base, s, _ := startInProcess(t, testConfig(t))
	waitReady(t, base, http.StatusOK)
	addr := strings.TrimPrefix(base, "http://")
	_, port, _ := strings.Cut(addr, ":")
	for _, host := range []string{addr, "localhost:" + port, "LocalHost:" + port, "localhost", "127.0.0.1", "127.1.2.3:" + port, "[::1]:" + port, "[::1]"} {
		if code, body := adminRequest(t, "GET", base, "/admin/api/runners", host, nil); code != http.StatusOK {
			t.Errorf("GET /admin/api/runners with Host %s = %d %s; want 200", host, code, body)
		}
	}
	a := newAdminClient(t, base, "")
	// curl with the cookie jar and the token.
	curl := map[string]string{"User-Agent": "curl/8.5.0", "Accept": "*/*"}
	if code, body := a.post("/admin/api/pause", "localhost:"+port, `{"runner": "orders"}`, curl); code != http.StatusOK {
		t.Fatalf("curl-style pause = %d %s; want 200", code, body)
	}
	if st := consumerState(t, s); st != "paused" {
		t.Errorf("after the pause: state %s; want paused", st)
	}
	// A same-origin page (or a browser's address bar: Sec-Fetch-Site none).
	sameOrigin := map[string]string{"Content-Type": "application/json; charset=utf-8", "Sec-Fetch-Site": "same-origin", "Origin": "http://" + addr}
	if code, body := a.post("/admin/api/resume", addr, `{"runner": "orders"}`, sameOrigin); code != http.StatusOK {
		t.Fatalf("same-origin resume = %d %s; want 200", code, body)
	}
	if st := consumerState(t, s); st != "running" {
		t.Errorf("after the resume: state %s; want running", st)
	}
	// Gin sends /admin to /admin/.
	if code, _ := adminRequest(t, "GET", base, "/admin/", "", nil); code != http.StatusOK {
		t.Errorf("GET /admin/ = %d; want 200", code)
	}
}

// With ADMIN_TOKEN, the token is what counts, whatever the Host (the
// service may sit behind a proxy); the CSRF token is still needed for a
// POST.
func TestAdminWithTokenAcceptsAnyHost(t *testing.T) {
	cfg := testConfig(t)
	cfg.adminToken = "s3cret-token"
	base, s, _ := startInProcess(t, cfg)
	waitReady(t, base, http.StatusOK)
	a := newAdminClient(t, base, "Bearer s3cret-token")
	if code, body := a.post("/admin/api/pause", "admin.internal.example", `{"runner": "orders"}`, nil); code != http.StatusOK {
		t.Fatalf("pause with the token and Host admin.internal.example = %d %s; want 200", code, body)
	}
	if st := consumerState(t, s); st != "paused" {
		t.Errorf("after the pause: state %s; want paused", st)
	}
}
