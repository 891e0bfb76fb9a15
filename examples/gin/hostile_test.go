package main

// Regression tests for issue 9 item 13: the service under hostile clients.

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// postKeyed posts body with an Idempotency-Key and returns the status and
// the decoded answer.
func postKeyed(t *testing.T, base, key, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("POST", base+"/orders", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST /orders: %v", err)
	}
	defer resp.Body.Close()
	var out map[string]any
	b, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(b, &out)
	return resp.StatusCode, out
}

// Issue 9 item 13: reusing an Idempotency-Key with another body used to
// answer 202 with the first order and drop the second silently. Like payment
// APIs, it is a client error (422); the same order again (even written
// differently) is still the same order.
func TestIdempotencyKeyReusedWithAnotherBodyIs422(t *testing.T) {
	base, s, _ := startInProcess(t, testConfig(t, "-process-time", "1ms"))
	waitReady(t, base, http.StatusOK)
	c1, b1 := postKeyed(t, base, "key-1", `{"item": "book", "quantity": 1}`)
	c2, b2 := postKeyed(t, base, "key-1", `{"quantity":1,"item":"book"}`) // the same order, written differently
	c3, b3 := postKeyed(t, base, "key-1", `{"item": "book", "quantity": 5}`)
	if c1 != http.StatusAccepted || c2 != http.StatusAccepted || b1["id"] != b2["id"] {
		t.Fatalf("the same order twice with one key = %d %v, %d %v; want 202 twice with one id", c1, b1, c2, b2)
	}
	msg, _ := b3["error"].(string)
	if c3 != http.StatusUnprocessableEntity || !strings.Contains(msg, "Idempotency-Key") {
		t.Errorf("another order with the same Idempotency-Key = %d %v; want 422 saying the key was used for another order", c3, b3)
	}
	id, _ := b1["id"].(string)
	if got := waitStatus(t, base, id, statusProcessed); got["quantity"] != float64(1) {
		t.Errorf("GET /orders/%s = %v; want the first order (quantity 1)", id, got)
	}
	if a, _, _ := s.counts(); a != 1 {
		t.Errorf("accepted %d orders; want 1", a)
	}
}

// Issue 9 item 13: order ids were an unsalted hash of the client's
// Idempotency-Key, so anyone who could guess a key could compute the id and
// read the order. Ids are derived with a server secret: two processes with
// their own random secrets give one key different ids, and neither is the
// key's plain hash; processes that share ORDER_ID_SECRET agree.
func TestOrderIDsAreNotPredictableFromTheKey(t *testing.T) {
	idFor := func(getenv func(string) string) string {
		cfg, err := parseConfig([]string{"-process-time", "1ms", "-database-url", testDatabase(t)}, getenv)
		if err != nil {
			t.Fatal(err)
		}
		base, _, stop := startInProcess(t, cfg)
		waitReady(t, base, http.StatusOK)
		code, body := postKeyed(t, base, "client-42-order-7", `{"item": "book", "quantity": 1}`)
		if code != http.StatusAccepted {
			t.Fatalf("POST /orders = %d %v", code, body)
		}
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		id, _ := body["id"].(string)
		return id
	}
	noEnv := func(string) string { return "" }
	a, b := idFor(noEnv), idFor(noEnv)
	sum := sha256.Sum256([]byte("client-42-order-7"))
	plain := "ord_" + hex.EncodeToString(sum[:12])
	if a == b || a == plain || b == plain {
		t.Errorf("ids for one key in two processes = %s, %s (plain hash %s); want two different ids, neither the plain hash", a, b, plain)
	}
	shared := func(k string) string {
		if k == "ORDER_ID_SECRET" {
			return "a-secret-of-at-least-16-bytes"
		}
		return ""
	}
	if c, d := idFor(shared), idFor(shared); c != d || c == plain {
		t.Errorf("ids for one key in two processes sharing ORDER_ID_SECRET = %s, %s; want the same id, not the plain hash %s", c, d, plain)
	}
}

// Issue 9 item 13: the 64 KiB limit was not enforced for a valid object
// followed by whitespace (202 for a 10 MB body), and invalid UTF-8 and
// control characters in "item" were accepted.
func TestPostOrderEnforcesTheLimitAndRejectsBadText(t *testing.T) {
	base, s, _ := startInProcess(t, testConfig(t))
	body := `{"item": "book", "quantity": 1}` + strings.Repeat(" ", 10<<20)
	if code, out := do(t, "POST", base+"/orders", body); code != http.StatusRequestEntityTooLarge {
		t.Errorf("POST /orders with a valid object and 10 MB of whitespace = %d %v; want 413", code, out)
	}
	for _, tc := range []struct{ name, body, want string }{
		{"invalid UTF-8", "{\"item\": \"bo\xffok\", \"quantity\": 1}", "UTF-8"},
		{"an unpaired surrogate", `{"item": "bo\ud800ok", "quantity": 1}`, "UTF-8"},
		{"NUL", `{"item": "bo\u0000ok", "quantity": 1}`, "control character"},
		{"a newline", `{"item": "book\n", "quantity": 1}`, "control character"},
		{"ESC", `{"item": "\u001b[31mbook", "quantity": 1}`, "control character"},
		{"DEL", "{\"item\": \"book\x7f\", \"quantity\": 1}", "control character"},
		// fuzz finding F2: a stray ] or } after the object was accepted
		{"a stray ] after the object", `{"item": "book", "quantity": 1}]`, "one JSON object"},
		{"a stray } after the object", `{"item": "book", "quantity": 1}}`, "one JSON object"},
	} {
		code, out := do(t, "POST", base+"/orders", tc.body)
		if msg, _ := out["error"].(string); code != http.StatusBadRequest || !strings.Contains(msg, tc.want) {
			t.Errorf("POST /orders with %s in item = %d %v; want 400 with %q", tc.name, code, out, tc.want)
		}
	}
	// Text that is merely unusual is fine.
	if code, out := do(t, "POST", base+"/orders", `{"item": "livre à 2 €, 本 📚", "quantity": 1}`); code != http.StatusAccepted {
		t.Errorf("POST /orders with non-ASCII text = %d %v; want 202", code, out)
	}
	if a, _, _ := s.counts(); a != 1 {
		t.Errorf("%d orders accepted; want 1 (only the last)", a)
	}
}

// Issue 9 item 13: a client that trickles its body held its connection for
// the 30 s read timeout. A 64 KiB body needs far less: the default cuts it
// off within 10 s.
func TestTricklingClientIsCutOff(t *testing.T) {
	t.Parallel()
	base, _, _ := startInProcess(t, testConfig(t))
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	fmt.Fprintf(conn, "POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{", maxBodySize)
	// One byte every 200 ms: the whole body would take 3.6 hours.
	go func() {
		for {
			time.Sleep(200 * time.Millisecond)
			if _, err := conn.Write([]byte(" ")); err != nil {
				return
			}
		}
	}()
	// Generous for a loaded machine, and still below the old 30 s.
	_ = conn.SetReadDeadline(time.Now().Add(25 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err == nil {
		resp.Body.Close()
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("a client trickling its body was still connected after %v", time.Since(start).Round(time.Second))
	}
	t.Logf("the trickling client was cut off after %v (response %v, error %v)", time.Since(start).Round(100*time.Millisecond), statusOf(resp), err)
}

func statusOf(resp *http.Response) string {
	if resp == nil {
		return "none"
	}
	return resp.Status
}

// Issue 9 item 13: connections had no cap (the process reached its file
// limit near 20,000 trickling clients). Beyond -max-conns, a connection
// waits until one closes.
func TestConnectionsBeyondTheCapWait(t *testing.T) {
	base, _, _ := startInProcess(t, testConfig(t, "-max-conns", "4"))
	waitReady(t, base, http.StatusOK)
	http.DefaultClient.CloseIdleConnections() // its keep-alive connection counts too
	addr := strings.TrimPrefix(base, "http://")
	var held []net.Conn
	for range 4 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held = append(held, c)
	}
	// The four connections are accepted and sent nothing; a fifth waits.
	cl := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	if resp, err := cl.Get(base + "/healthz"); err == nil {
		resp.Body.Close()
		t.Errorf("GET /healthz with 4 connections open and -max-conns 4 = %d; want it to wait", resp.StatusCode)
	}
	held[0].Close()
	cl.Timeout = 20 * time.Second
	resp, err := cl.Get(base + "/healthz")
	if err != nil {
		t.Fatalf("GET /healthz once a connection closed: %v; want an answer", err)
	}
	resp.Body.Close()
}

// Hostile review of issue 9 item 13, defect 1: the item limit measured the
// trimmed item but the order kept the untrimmed one, so 60 KB of padding
// (spaces, U+00A0, U+3000) passed and every order stored ~125 KB. An item
// is trimmed before it is checked, and what is stored is what was checked.
func TestPaddedItemIsTrimmedOrRefused(t *testing.T) {
	base, _, _ := startInProcess(t, testConfig(t, "-process-time", "1ms"))
	waitReady(t, base, http.StatusOK)
	for _, pad := range []string{" ", "\u00a0", "\u3000", "\u2003", "\u200b", "\ufeff"} {
		for _, n := range []int{maxItemLen, 10_000} {
			item := strings.Repeat(pad, n) + "book" + strings.Repeat(pad, n)
			body, _ := json.Marshal(OrderRequest{Item: item, Quantity: 1})
			code, ans := postKeyed(t, base, "", string(body))
			switch code {
			case http.StatusBadRequest:
				continue
			case http.StatusAccepted:
			default:
				t.Fatalf("item padded with %d × %U = %d %v; want 202 or 400", 2*n, []rune(pad)[0], code, ans)
			}
			id, _ := ans["id"].(string)
			_, got := do(t, "GET", base+"/orders/"+id, "")
			stored, _ := got["item"].(string)
			if utf8.RuneCountInString(stored) > maxItemLen || len(stored) > 4*maxItemLen || stored != "book" {
				t.Errorf("item padded with %d × %U stored as %d characters, %d bytes (%.20q…); want it trimmed to \"book\" or refused",
					2*n, []rune(pad)[0], utf8.RuneCountInString(stored), len(stored), stored)
			}
		}
	}
}

// Defect 4: MaxHeaderBytes was Go's 1 MiB default (400 connections with
// unfinished 1 MiB headers: 463 MB of RSS). A 64 KiB header is refused.
func TestLargeHeaderIs431(t *testing.T) {
	base, _, _ := startInProcess(t, testConfig(t))
	waitReady(t, base, http.StatusOK)
	req, _ := http.NewRequest("GET", base+"/healthz", nil)
	req.Header.Set("X-Padding", strings.Repeat("a", 64<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET /healthz with a 64 KiB header: %v; want 431", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("GET /healthz with a 64 KiB header = %d; want 431", resp.StatusCode)
	}
}
