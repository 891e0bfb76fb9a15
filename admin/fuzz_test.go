package admin_test

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/queuekit/queuekit/admin"
)

// FuzzRoutes sends arbitrary requests (method, path, query, headers, body)
// to the handler: it must answer each with a status it documents, never
// panic (a panic would be recovered and logged: the log must hold none),
// and answer the API's requests with JSON.
func FuzzRoutes(f *testing.F) {
	e := newEnv(f)
	e.publish(f, "bad-1")
	e.deadLetters(f, 1)
	var sink logSink
	h, err := admin.New(admin.Config{Supervisor: e.sup, Logger: slog.New(&sink)})
	if err != nil {
		f.Fatal(err)
	}
	// A valid token, as a client that loaded a page holds.
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/api/runners", nil))
	tok := rec.Header().Get("X-CSRF-Token")
	for _, s := range []struct {
		method, path, query, ctype, body string
	}{
		{"GET", "/", "", "", ""},
		{"GET", "/runner", "runner=orders&reason=rej&limit=2", "", ""},
		{"GET", "/runner", "runner=orders&cursor=%ff%00&limit=-5", "", ""},
		{"GET", "/api/deadletters", "runner=orders&body_limit=-1", "", ""},
		{"GET", "/api/deadletters", "runner=orders&limit=99999999999999999999", "", ""},
		{"POST", "/api/redrive", "", "application/json", `{"runner":"orders","ids":["orders.dlq-1"],"dry_run":true}`},
		{"POST", "/api/purge", "", "application/json", `{"runner":"orders","reason":"x","max":3,"dry_run":true}`},
		{"POST", "/api/pause", "", "application/json", `{"runner":"\u0000"}`},
		{"POST", "/confirm", "", "application/x-www-form-urlencoded", "runner=orders&op=purge-all&csrf_token=" + url.QueryEscape(tok)},
		{"POST", "/confirm", "", "application/x-www-form-urlencoded", "runner=orders&op=-&id=%zz&csrf_token=" + url.QueryEscape(tok)},
		{"POST", "/redrive", "", "multipart/form-data; boundary=x", "--x\r\n"},
		{"DELETE", "/api/runners", "", "", ""},
		{"GET", "//api//runners/", "", "", ""},
		{"GET", "/a/b/c/api/runners", "", "", ""},
		{"POST", "/api/", "", "application/json", "{}"},
	} {
		f.Add(s.method, s.path, s.query, s.ctype, []byte(s.body), true)
	}
	f.Fuzz(func(t *testing.T, method, path, query, ctype string, body []byte, withToken bool) {
		if !validMethod(method) {
			return // net/http refuses such requests before any handler
		}
		req := &http.Request{
			Method:     method,
			URL:        &url.URL{Path: path, RawQuery: query},
			RequestURI: (&url.URL{Path: path, RawQuery: query}).RequestURI(),
			Header:     http.Header{},
			Host:       "localhost:8080",
			RemoteAddr: "127.0.0.1:4242",
			Body:       io.NopCloser(bytes.NewReader(body)),
			Proto:      "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		}
		req = req.WithContext(t.Context())
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		if withToken {
			req.AddCookie(&http.Cookie{Name: "queuekit_admin_csrf", Value: tok})
			req.Header.Set("X-CSRF-Token", tok)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch rec.Code {
		case 200, 301, 303, 400, 403, 404, 405, 409, 415:
		default:
			t.Errorf("%s %q ? %q = %d %s; want a documented status", method, path, query, rec.Code, rec.Body)
		}
		if p := sink.panics(); len(p) > 0 {
			t.Fatalf("%s %q ? %q: the handler panicked: %s", method, path, query, p[0])
		}
		if strings.Contains(path, "/api/") && !strings.HasSuffix(path, "/") && rec.Code != 301 && !strings.HasPrefix(rec.Header().Get("Content-Type"), "application/json") {
			t.Errorf("%s %q = %d with Content-Type %q; want JSON from the API", method, path, rec.Code, rec.Header().Get("Content-Type"))
		}
	})
}

// validMethod reports whether m is a token, as net/http requires of a
// method.
func validMethod(m string) bool {
	if m == "" {
		return false
	}
	for _, c := range m {
		if c <= ' ' || c >= 0x7f || strings.ContainsRune(`()<>@,;:\"/[]?={}`, c) {
			return false
		}
	}
	return true
}
