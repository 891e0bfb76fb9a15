package main

// Regression tests for the outside review of issue 10: the admin endpoints
// could be triggered cross-site (a page's plain form or fetch paused a
// consumer) and answered any Host (a DNS-rebinding page could read the
// admin report).

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
)

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
// ADMIN_TOKEN: not a browser's cross-site fetch (Sec-Fetch-Site), not an
// older browser's (Origin of another site), not a plain HTML form (which
// cannot send Content-Type: application/json).
func TestAdminRefusesCrossSiteRequests(t *testing.T) {
	const token = "s3cret-token"
	for _, withToken := range []bool{false, true} {
		cfg := testConfig(t)
		name := "without ADMIN_TOKEN"
		if withToken {
			cfg.adminToken, name = token, "with ADMIN_TOKEN"
		}
		t.Run(name, func(t *testing.T) {
			base, s, _ := startInProcess(t, cfg)
			waitReady(t, base, http.StatusOK)
			host := strings.TrimPrefix(base, "http://")
			auth := func(h map[string]string) map[string]string {
				if withToken {
					h["Authorization"] = "Bearer " + token
				}
				return h
			}
			cases := []struct {
				name    string
				headers map[string]string
			}{
				{"the reviewer's request: a cross-site text/plain POST", map[string]string{
					"Origin": "https://attacker.example", "Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"}},
				{"a cross-site request even with a JSON content type", map[string]string{
					"Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"}},
				{"a same-site (another port or subdomain) request", map[string]string{
					"Sec-Fetch-Site": "same-site", "Content-Type": "application/json"}},
				{"an older browser's request from another origin", map[string]string{
					"Origin": "https://attacker.example", "Content-Type": "application/json"}},
				{"an opaque (null) origin, as from a sandboxed frame", map[string]string{
					"Origin": "null", "Content-Type": "application/json"}},
				{"a form post with no browser headers at all", map[string]string{
					"Content-Type": "application/x-www-form-urlencoded"}},
				{"a text/plain post that claims JSON in a parameter", map[string]string{
					"Content-Type": "text/plain; application/json"}},
				{"a post without a content type", map[string]string{}},
			}
			for _, tc := range cases {
				code, body := adminRequest(t, "POST", base, "/admin/consumers/orders/pause", host, auth(tc.headers))
				if code != http.StatusForbidden {
					t.Errorf("%s: POST /admin/consumers/orders/pause = %d %s; want 403", tc.name, code, body)
				}
				resumeIfPaused(t, s, tc.name)
			}
		})
	}
}

// Without ADMIN_TOKEN, the admin endpoints answer only requests addressed
// to a loopback name: a DNS-rebinding page (attacker.example resolved to
// 127.0.0.1) reaches the loopback interface but carries its own Host.
func TestAdminRefusesForeignHostWithoutToken(t *testing.T) {
	base, s, _ := startInProcess(t, testConfig(t))
	waitReady(t, base, http.StatusOK)
	_, port, _ := strings.Cut(strings.TrimPrefix(base, "http://"), ":")
	json := map[string]string{"Content-Type": "application/json"}
	for _, host := range []string{"attacker.example", "attacker.example:" + port, "localhost.attacker.example:" + port,
		"127.0.0.1.attacker.example", "10.0.0.1:" + port, "[::2]:" + port, "localhostx:" + port} {
		if code, body := adminRequest(t, "GET", base, "/admin/consumers", host, nil); code != http.StatusForbidden {
			t.Errorf("GET /admin/consumers with Host %s = %d %s; want 403", host, code, body)
		}
		// The same-origin headers a rebinding page's fetch would carry.
		h := map[string]string{"Content-Type": "application/json", "Sec-Fetch-Site": "same-origin", "Origin": "http://" + host}
		if code, body := adminRequest(t, "POST", base, "/admin/consumers/orders/pause", host, h); code != http.StatusForbidden {
			t.Errorf("POST /admin/consumers/orders/pause with Host %s = %d %s; want 403", host, code, body)
		}
		resumeIfPaused(t, s, "Host "+host)
	}
	// The other endpoints do not care about Host.
	if code, body := adminRequest(t, "POST", base, "/orders", "attacker.example", json); code == http.StatusForbidden {
		t.Errorf("POST /orders with a foreign Host = %d %s; want the orders API unaffected", code, body)
	}
}

// What an operator does on the machine, and what a same-origin page does,
// still works: curl with the JSON content type, to any loopback name.
func TestAdminAcceptsLoopbackRequests(t *testing.T) {
	base, s, _ := startInProcess(t, testConfig(t))
	waitReady(t, base, http.StatusOK)
	addr := strings.TrimPrefix(base, "http://")
	_, port, _ := strings.Cut(addr, ":")
	for _, host := range []string{addr, "localhost:" + port, "LocalHost:" + port, "localhost", "127.0.0.1", "127.1.2.3:" + port, "[::1]:" + port, "[::1]"} {
		if code, body := adminRequest(t, "GET", base, "/admin/consumers", host, nil); code != http.StatusOK {
			t.Errorf("GET /admin/consumers with Host %s = %d %s; want 200", host, code, body)
		}
	}
	// curl -XPOST -H 'Content-Type: application/json' http://localhost:PORT/admin/consumers/orders/pause
	curl := map[string]string{"Content-Type": "application/json", "User-Agent": "curl/8.5.0", "Accept": "*/*"}
	if code, body := adminRequest(t, "POST", base, "/admin/consumers/orders/pause", "localhost:"+port, curl); code != http.StatusOK {
		t.Fatalf("curl-style pause = %d %s; want 200", code, body)
	}
	if st := consumerState(t, s); st != "paused" {
		t.Errorf("after the pause: state %s; want paused", st)
	}
	// A same-origin page (or a browser's address bar: Sec-Fetch-Site none).
	sameOrigin := map[string]string{"Content-Type": "application/json; charset=utf-8", "Sec-Fetch-Site": "same-origin", "Origin": "http://" + addr}
	if code, body := adminRequest(t, "POST", base, "/admin/consumers/orders/resume", addr, sameOrigin); code != http.StatusOK {
		t.Fatalf("same-origin resume = %d %s; want 200", code, body)
	}
	if st := consumerState(t, s); st != "running" {
		t.Errorf("after the resume: state %s; want running", st)
	}
}

// With ADMIN_TOKEN, the token is what counts, whatever the Host (the
// service may sit behind a proxy); the JSON content type is still needed
// for a POST.
func TestAdminWithTokenAcceptsAnyHost(t *testing.T) {
	cfg := testConfig(t)
	cfg.adminToken = "s3cret-token"
	base, s, _ := startInProcess(t, cfg)
	waitReady(t, base, http.StatusOK)
	h := map[string]string{"Authorization": "Bearer s3cret-token", "Content-Type": "application/json"}
	if code, body := adminRequest(t, "POST", base, "/admin/consumers/orders/pause", "admin.internal.example", h); code != http.StatusOK {
		t.Fatalf("pause with the token and Host admin.internal.example = %d %s; want 200", code, body)
	}
	if st := consumerState(t, s); st != "paused" {
		t.Errorf("after the pause: state %s; want paused", st)
	}
}
