package main

// The admin page in a real browser (issue 11): headless Chromium, driven
// over the DevTools protocol by chromedp, does what an operator does when
// an order fails for good: sees the consumers and the dead letter with its
// reason, fixes the cause, redrives it (select, confirm after the dry run),
// and the order is processed.

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/queuekit/queuekit/broker"
)

// chromiumPath is the browser the test drives: $QUEUEKIT_CHROMIUM, else
// Debian's chromium package (which .ci/run installs). Without it the test
// is skipped, or fails when QUEUEKIT_REQUIRE_BROKERS=1 (CI).
// skippedBrowser is the Chromium path looked for when the browser test was
// skipped, for the summary TestMain prints.
var skippedBrowser atomic.Value

func chromiumPath(t *testing.T) string {
	t.Helper()
	p := os.Getenv("QUEUEKIT_CHROMIUM")
	if p == "" {
		p = "/usr/bin/chromium"
	}
	if _, err := exec.LookPath(p); err != nil {
		if os.Getenv("QUEUEKIT_REQUIRE_BROKERS") == "1" {
			t.Fatalf("no Chromium at %s (QUEUEKIT_REQUIRE_BROKERS=1): apt-get install chromium, or set QUEUEKIT_CHROMIUM", p)
		}
		skippedBrowser.Store(p)
		t.Skipf("no Chromium at %s: apt-get install chromium (or set QUEUEKIT_CHROMIUM) to run the browser test", p)
	}
	return p
}

// artifactDir is where the test leaves its screenshots: $QUEUEKIT_ARTIFACTS
// (kept after the test), else a temporary directory of the test.
func artifactDir(t *testing.T) string {
	t.Helper()
	if d := os.Getenv("QUEUEKIT_ARTIFACTS"); d != "" {
		d = filepath.Join(d, "examples-gin-"+t.Name())
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	return t.TempDir()
}

// browser starts a headless Chromium with a fresh profile and returns a
// chromedp context for one tab, bounded by timeout.
func browser(t *testing.T, timeout time.Duration) context.Context {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1400, 900),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx)
	ctx, cancelTimeout := context.WithTimeout(ctx, timeout)
	t.Cleanup(func() {
		cancelTimeout()
		cancelTab()
		cancelAlloc() // kills the browser and waits for it
	})
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("starting %s: %v", chromiumPath(t), err)
	}
	return ctx
}

// text returns the text of the first element that matches the CSS selector.
func text(t *testing.T, ctx context.Context, css string) string {
	t.Helper()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(css)))
	if err != nil {
		t.Fatalf("text of %s: %v", css, err)
	}
	return s
}

// waitText waits until the page's body holds want, and returns the body's
// text.
func waitText(t *testing.T, ctx context.Context, want string) string {
	t.Helper()
	var body string
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(body, want) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		if b, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(`body`))); err == nil {
			body = b
		}
	}
	return body
}

func screenshot(t *testing.T, ctx context.Context, dir, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100) /* 100: PNG */)
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", p)
}

// nonLoopbackIP returns an address of this machine that is not loopback,
// or nil.
func nonLoopbackIP() net.IP {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil && !n.IP.IsLinkLocalUnicast() {
			return n.IP
		}
	}
	return nil
}

func TestAdminPageInABrowserRedrivesAFailedOrder(t *testing.T) {
	path := chromiumPath(t)
	// The service listens on every interface, so that a request from
	// another address than loopback can be made too.
	ln, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	_, s, _ := startOn(t, testConfig(t, "-unavailable-items", "gizmo", "-process-time", "1ms"), ln)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	waitReady(t, base, http.StatusOK)

	// An order the service cannot process: dead-lettered with its reason.
	code, body := do(t, "POST", base+"/orders", `{"item": "gizmo", "quantity": 3}`)
	id, _ := body["id"].(string)
	if code != http.StatusAccepted || id == "" {
		t.Fatalf("POST /orders = %d %v; want 202", code, body)
	}
	waitStatus(t, base, id, statusFailed)

	dir := artifactDir(t)
	ctx := browser(t, 90*time.Second)
	t.Logf("browser: %s; service: %s", path, base)

	// The consumers.
	if err := chromedp.Do(ctx,
		chromedp.Navigate(base+"/admin/"),
		chromedp.WaitVisible(chromedp.CSS(`tr.runner[data-name="orders"]`)),
	); err != nil {
		t.Fatalf("loading /admin/: %v", err)
	}
	runners := text(t, ctx, `#runners`)
	for _, want := range []string{"orders", "running", "watchdog"} {
		if !strings.Contains(runners, want) {
			t.Errorf("the consumers table lacks %q:\n%s", want, runners)
		}
	}
	screenshot(t, ctx, dir, "1-consumers.png")

	// The dead letter, with its reason.
	if err := chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(`tr.runner[data-name="orders"] a.deadletters`)),
		chromedp.WaitVisible(chromedp.CSS(`#deadletters`)),
	); err != nil {
		t.Fatalf("opening the dead letters of orders: %v", err)
	}
	dead := text(t, ctx, `#deadletters`)
	reason := fmt.Sprintf("order %s: item \"gizmo\" is unavailable", id)
	if !strings.Contains(dead, reason) {
		t.Fatalf("the dead letters page lacks the reason %q:\n%s", reason, dead)
	}
	screenshot(t, ctx, dir, "2-dead-letters.png")

	// A state-changing request from the page without the CSRF token (a
	// same-origin form post, with the cookie): refused. (A fetch cannot
	// even be sent: the page's Content-Security-Policy allows no
	// connections.)
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`(() => {
		const f = document.createElement("form");
		f.method = "post"; f.action = "redrive";
		for (const [k, v] of [["runner", "orders"], ["all", "1"]]) {
			const i = document.createElement("input"); i.type = "hidden"; i.name = k; i.value = v; f.appendChild(i);
		}
		document.body.appendChild(f); f.submit(); return true;
	})()`)); err != nil {
		t.Fatalf("posting the form without the token: %v", err)
	}
	if answer := waitText(t, ctx, "forbidden"); !strings.Contains(answer, "CSRF") {
		t.Errorf("a same-origin POST redrive without the CSRF token answered %q; want forbidden, for want of the CSRF token", answer)
	}
	e, err := s.sup.DeadLetters("orders")
	if err != nil {
		t.Fatal(err)
	}
	if n, err := e.Count(context.Background(), broker.DeadLetterFilter{}); err != nil || n != 1 {
		t.Fatalf("dead letters after the refused redrive: %d, %v; want 1", n, err)
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"/admin/runner?runner=orders"), chromedp.WaitVisible(chromedp.CSS(`#deadletters`))); err != nil {
		t.Fatal(err)
	}

	// The operator fixes the cause, then redrives: select, confirm.
	s.setUnavailable(nil)
	if err := chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(`tr.deadletter input[type="checkbox"]`)),
		chromedp.Click(chromedp.CSS(`#redrive-selected`)),
		chromedp.WaitVisible(chromedp.CSS(`#confirm`)),
	); err != nil {
		t.Fatalf("asking to redrive: %v", err)
	}
	would := text(t, ctx, `#would`)
	if would != "1" {
		t.Errorf("the confirmation page's dry run = %q to redrive; want 1", would)
	}
	screenshot(t, ctx, dir, "3-confirm.png")
	if err := chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(`#confirm`)),
		chromedp.WaitVisible(chromedp.CSS(`#result`)),
	); err != nil {
		t.Fatalf("confirming the redrive: %v", err)
	}
	done := text(t, ctx, `#done`)
	if done != "1" {
		t.Errorf("the result page says %q redriven; want 1", done)
	}
	screenshot(t, ctx, dir, "4-redriven.png")
	// The result is a page of its own (the POST redirected there): reloading
	// it shows the result again and does not redrive again.
	loc, err := chromedp.Run(ctx, chromedp.Location())
	if err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(ctx, chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS(`#result`))); err != nil {
		t.Fatalf("reloading the result: %v", err)
	}
	if !strings.Contains(loc, "/admin/result?") || text(t, ctx, `#done`) != "1" {
		t.Errorf("after the redrive the browser is at %q, showing %q redriven; want the result page, 1", loc, text(t, ctx, `#done`))
	}
	got := waitStatus(t, base, id, statusProcessed)
	t.Logf("order %s after the redrive: %v", id, got)

	// The consumers page now shows no dead letter left.
	if err := chromedp.Do(ctx,
		chromedp.Navigate(base+"/admin/"),
		chromedp.WaitVisible(chromedp.CSS(`tr.runner[data-name="orders"]`)),
	); err != nil {
		t.Fatal(err)
	}
	dead = text(t, ctx, `tr.runner[data-name="orders"] a.deadletters`)
	if dead != "0" {
		t.Errorf("dead letters of orders after the redrive: %q; want 0", dead)
	}
	screenshot(t, ctx, dir, "5-consumers-after.png")

	// Another site's page posting a form at the admin page through this
	// browser: refused, nothing paused.
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `<!doctype html><form method="post" action="%s/admin/pause"><input name="runner" value="orders"><input name="csrf_token" value="forged"><button id="go">go</button></form>`, base)
	}))
	defer evil.Close()
	evilURL := strings.Replace(evil.URL, "127.0.0.1", "localhost", 1) // another origin than base
	if err := chromedp.Do(ctx,
		chromedp.Navigate(evilURL),
		chromedp.Click(chromedp.CSS(`#go`)),
		chromedp.WaitVisible(chromedp.CSS(`body`)),
	); err != nil {
		t.Fatalf("the cross-site form: %v", err)
	}
	answer := waitText(t, ctx, "forbidden")
	if !strings.Contains(answer, "forbidden") || consumerState(t, s) != "running" {
		t.Errorf("a cross-site form post to /admin/pause answered %q, orders %s; want forbidden, still running", answer, consumerState(t, s))
	}

	// Without the hook, a request from another address than loopback is
	// refused, whatever its Host; and a POST without the token too.
	if ip := nonLoopbackIP(); ip != nil {
		other := fmt.Sprintf("http://%s:%d", ip, port)
		for _, host := range []string{"", "localhost", fmt.Sprintf("127.0.0.1:%d", port)} {
			if code, body := adminRequest(t, "GET", other, "/admin/", host, nil); code != http.StatusForbidden {
				t.Errorf("GET /admin/ from %s (Host %q) = %d %s; want 403", ip, host, code, body)
			}
		}
		if code, _ := do(t, "GET", other+"/orders/"+id, ""); code != http.StatusOK {
			t.Errorf("GET /orders/%s from %s = %d; want the orders API unaffected", id, ip, code)
		}
	} else {
		t.Log("no non-loopback address on this machine: the request from another address is made in-process")
	}
	// The same through the service's router, from a made-up address.
	req := httptest.NewRequest("GET", "/admin/", nil)
	req.RemoteAddr, req.Host = "198.51.100.7:4242", fmt.Sprintf("127.0.0.1:%d", port)
	rec := httptest.NewRecorder()
	s.routes().ServeHTTP(rec, req)
	if rec.Code != http.StatusForbidden {
		t.Errorf("GET /admin/ from 198.51.100.7 = %d; want 403", rec.Code)
	}
	form := url.Values{"runner": {"orders"}, "all": {"1"}}
	req, _ = http.NewRequest("POST", base+"/admin/purge", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", base)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("POST /admin/purge without the CSRF token = %d; want 403", resp.StatusCode)
	}
}
