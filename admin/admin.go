package admin

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// Config configures the handler New returns. Supervisor is required; the
// zero value of every other field means its documented default.
type Config struct {
	// Supervisor is the set of runners the handler shows and acts on.
	Supervisor *consumer.Supervisor
	// Authorize decides whether a request may use the handler: nil lets
	// it through, an error refuses it with 403 (the error is logged, not
	// shown). It is the embedding application's authentication and
	// authorization: check a session, a bearer token, a client
	// certificate. It is called for every request, reads and changes
	// alike, before anything else; it must be safe for concurrent use.
	//
	// When Authorize is nil, only requests from the loopback interface
	// (RemoteAddr 127.0.0.0/8 or ::1) that are addressed to a loopback
	// name (Host localhost, 127.0.0.0/8 or [::1], any port) are allowed:
	// the Host check keeps out a DNS-rebinding page, whose requests reach
	// the loopback interface but carry its own name. Behind a reverse
	// proxy on the same machine every request looks local: set Authorize.
	Authorize func(*http.Request) error
	// Logger receives the actions taken (pause, resume, redrive, purge)
	// and refused requests. Nil means slog.Default().
	Logger *slog.Logger
	// Title is the page's heading. Empty means "queuekit".
	Title string
	// MaxRedrives is the redrive limit the page and the API use (see
	// broker.RedriveOptions.MaxRedrives): zero means
	// broker.DefaultMaxRedrives, negative means none. A JSON redrive may
	// ask for a lower limit, never a higher one.
	MaxRedrives int
	// Timeout bounds each call the handler makes to a runner or a broker
	// (a backlog, a dead-letter listing, a redrive). Zero means 10 s.
	Timeout time.Duration
	// Prefix, when set, is the path the handler is mounted at as the
	// handler sees it (e.g. "/admin" under Gin's "/admin/*any" without
	// http.StripPrefix): only Prefix followed by one of the handler's
	// routes exactly is served. Empty: under http.StripPrefix (or at the
	// root) the routes are matched exactly too; otherwise they are found
	// from the end of the path, and any prefix is accepted.
	Prefix string
	// SecureCookie marks the CSRF cookie Secure on every response. Without
	// it the cookie is Secure only when the request came over TLS to this
	// process (r.TLS set); behind a proxy that terminates TLS, set it, so
	// that the browser never sends the cookie over plain HTTP.
	SecureCookie bool
	// PageSize is how many dead letters a page shows. Zero means 50; at
	// most broker.MaxListLimit.
	PageSize int
}

// handler is the http.Handler New returns. It is safe for concurrent use.
type handler struct {
	cfg     Config
	sup     *consumer.Supervisor
	log     *slog.Logger
	csrf    csrfKey
	origin  *http.CrossOriginProtection
	timeout time.Duration
	page    int

	gates gates // per runner: the broker calls still running (call)

	rmu   sync.Mutex
	rates map[string]*rateState // per runner name, for the per-second rates
}

// New returns the admin handler for cfg.Supervisor. It returns an error
// wrapping broker.ErrInvalidConfig for a nil Supervisor or an out-of-range
// field. The handler may be mounted at any path (see the package
// documentation).
func New(cfg Config) (http.Handler, error) {
	switch {
	case cfg.Supervisor == nil:
		return nil, fmt.Errorf("%w: admin: nil Supervisor", broker.ErrInvalidConfig)
	case cfg.Timeout < 0:
		return nil, fmt.Errorf("%w: admin: negative Timeout %v", broker.ErrInvalidConfig, cfg.Timeout)
	case cfg.PageSize < 0 || cfg.PageSize > broker.MaxListLimit:
		return nil, fmt.Errorf("%w: admin: PageSize %d out of range [0, %d]", broker.ErrInvalidConfig, cfg.PageSize, broker.MaxListLimit)
	}
	h := &handler{
		cfg:     cfg,
		sup:     cfg.Supervisor,
		log:     cfg.Logger,
		origin:  http.NewCrossOriginProtection(),
		timeout: cfg.Timeout,
		page:    cfg.PageSize,
		rates:   make(map[string]*rateState),
	}
	if h.log == nil {
		h.log = slog.Default()
	}
	if h.timeout == 0 {
		h.timeout = 10 * time.Second
	}
	if h.page == 0 {
		h.page = 50
	}
	if h.cfg.Title == "" {
		h.cfg.Title = "queuekit"
	}
	if _, err := rand.Read(h.csrf[:]); err != nil {
		return nil, fmt.Errorf("admin: CSRF key: %w", err)
	}
	return h, nil
}

// route is what a request asks for, found from the end of its path so that
// the handler works wherever it is mounted.
type route struct {
	api  bool   // under api/: JSON in and out
	leaf string // the last path segment: "" for the index page
	// base is the path of the handler's root in the client's URL (from
	// RequestURI, which http.StripPrefix leaves alone), ending in "/": the
	// CSRF cookie's Path.
	base string
}

// Page and API routes: the last segment of the path, and for the API the
// segment "api" before it.
var (
	pageLeaves = map[string]bool{"": true, "runner": true, "confirm": true, "pause": true, "resume": true, "redrive": true, "purge": true, "result": true}
	apiLeaves  = map[string]bool{"runners": true, "deadletters": true, "pause": true, "resume": true, "redrive": true, "purge": true}
)

// findRoute reads the route from r's path. ok is false for a path the
// handler does not serve.
func (h *handler) findRoute(r *http.Request) (rt route, ok bool) {
	p := r.URL.Path
	exact := h.cfg.Prefix != ""
	if exact {
		if p, ok = strings.CutPrefix(p, h.cfg.Prefix); !ok {
			return rt, false
		}
	} else if u, err := url.ParseRequestURI(r.RequestURI); err == nil && u.Path != p && strings.HasSuffix(u.Path, p) {
		exact = true // under http.StripPrefix: p is the path from the handler's root
	}
	if exact && !exactRoute(p) {
		return rt, false
	}
	i := strings.LastIndexByte(p, '/')
	rt.leaf = p[i+1:]
	parent := ""
	if i >= 0 {
		parent = p[:i]
	}
	rt.api = parent == "api" || strings.HasSuffix(parent, "/api")
	switch {
	case rt.api && apiLeaves[rt.leaf]:
	case rt.leaf == "" && (rt.api || routeName(parent[strings.LastIndexByte(parent, '/')+1:])):
		return rt, false // "api/", "runner/", "api/runners/": not the index
	case rt.leaf == "":
	case !rt.api && pageLeaves[rt.leaf]:
	default:
		return rt, false
	}
	rt.base = basePath(r, rt)
	if rt.leaf != "" && !strings.HasSuffix(rt.base, "/") {
		rt.base = "/"
	}
	return rt, true
}

// routeName reports whether a path segment names a route.
func routeName(seg string) bool { return seg != "" && (pageLeaves[seg] || apiLeaves[seg]) }

// exactRoute reports whether p, a path from the handler's root, is one of
// its routes exactly.
func exactRoute(p string) bool {
	if !strings.HasPrefix(p, "/") {
		p = "/" + p // under http.StripPrefix("/admin/", …)
	}
	if p == "/" {
		return true
	}
	if leaf, ok := strings.CutPrefix(p, "/api/"); ok {
		return apiLeaves[leaf]
	}
	return strings.Count(p, "/") == 1 && pageLeaves[p[1:]]
}

// basePath is the client-side path of the handler's root: the request's
// original path (RequestURI) without the route's segments.
func basePath(r *http.Request, rt route) string {
	u, err := url.ParseRequestURI(r.RequestURI)
	if err != nil || u.Path == "" {
		return "/"
	}
	p := strings.TrimSuffix(u.Path, rt.leaf)
	if rt.api {
		p = strings.TrimSuffix(p, "api/")
	}
	return p // without a final slash only for the index asked without one
}

// ServeHTTP implements http.Handler: authorization, the cross-origin and
// CSRF checks, then the route.
func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer func() {
		// The handler does not panic on any input; a panic here is a bug
		// (or a panicking Authorize hook or runner), and costs one
		// request, not the embedding program.
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				panic(p)
			}
			h.log.Error("queuekit: admin: panic serving a request", "path", r.URL.Path, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			writeError(w, true, http.StatusInternalServerError, "internal error")
		}
	}()
	rt, ok := h.findRoute(r)
	api := ok && rt.api || !ok && strings.Contains(r.URL.Path, "/api/")
	setCommonHeaders(w)
	if err := h.authorize(r); err != nil {
		h.log.Info("queuekit: admin: request refused", "path", r.URL.Path, "remote", r.RemoteAddr, "reason", err)
		writeError(w, api, http.StatusForbidden, "forbidden: "+publicReason(err))
		return
	}
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		// Another site's page (or a sibling subdomain's: "same-site") made
		// the browser send this, if only an <img>: refused, GETs too, since
		// a GET makes the broker work (a dead-letter listing browses the
		// queue on RabbitMQ). The operator's own pages are "same-origin",
		// a typed or bookmarked URL "none"; clients that are not browsers
		// send no such header.
		h.log.Info("queuekit: admin: cross-site request refused", "path", r.URL.Path, "remote", r.RemoteAddr, "sec-fetch-site", site)
		writeError(w, api, http.StatusForbidden, "forbidden: cross-site request (Sec-Fetch-Site: "+site+")")
		return
	}
	if err := h.origin.Check(r); err != nil {
		h.log.Info("queuekit: admin: cross-origin request refused", "path", r.URL.Path, "remote", r.RemoteAddr, "error", err)
		writeError(w, api, http.StatusForbidden, "forbidden: cross-origin request")
		return
	}
	if !ok {
		writeError(w, api, http.StatusNotFound, "no such page")
		return
	}
	if rt.leaf == "" && !strings.HasSuffix(rt.base, "/") {
		// Asked for "/admin" where the handler answers "/admin/" too (as
		// under http.StripPrefix("/admin", …)): the pages' relative
		// links need the slash.
		redirectToSlash(w, r)
		return
	}
	safe := r.Method == http.MethodGet || r.Method == http.MethodHead
	if !safe && r.Method != http.MethodPost {
		w.Header().Set("Allow", "GET, HEAD, POST")
		writeError(w, rt.api, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed")
		return
	}
	if state := isStateChanging(rt); state != !safe {
		if state {
			w.Header().Set("Allow", "POST")
		} else {
			w.Header().Set("Allow", "GET, HEAD")
		}
		writeError(w, rt.api, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed here")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.timeout)
	defer cancel()
	r = r.WithContext(ctx)
	if rt.api {
		h.serveAPI(w, r, rt)
		return
	}
	h.servePage(w, r, rt)
}

// isStateChanging reports whether a route takes POST (and a CSRF token)
// rather than GET. The confirmation page changes nothing, but it is
// reached by POST so that a selection of many ids needs no long URL, and
// it shows a dry run, which costs the broker.
func isStateChanging(rt route) bool {
	switch rt.leaf {
	case "", "runner", "result", "runners", "deadletters":
		return false
	}
	return true
}

// redirectToSlash sends the client to the handler's root with a trailing
// slash, relative to where it asked, since the handler does not know where
// it is mounted.
func redirectToSlash(w http.ResponseWriter, r *http.Request) {
	last := "."
	if u, err := url.ParseRequestURI(r.RequestURI); err == nil {
		if p := strings.TrimSuffix(u.Path, "/"); p != "" {
			last = p[strings.LastIndexByte(p, '/')+1:]
		}
	}
	redirect(w, url.PathEscape(last)+"/", http.StatusMovedPermanently)
}

// redirect sends a redirect to a URL relative to the request's, as the
// client sees it. (http.Redirect resolves a relative URL against the path
// the handler sees, which http.StripPrefix has cut.)
func redirect(w http.ResponseWriter, location string, code int) {
	w.Header().Set("Location", location)
	w.WriteHeader(code)
}

func setCommonHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY") // the buttons must not be clickjacked
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
}

// errLoopbackOnly and errLoopbackHost are the refusals without an
// Authorize hook; they are shown to the client.
var (
	errLoopbackOnly = errors.New("no Authorize hook is set: only requests from the loopback interface are allowed")
	errLoopbackHost = errors.New("no Authorize hook is set: only requests addressed to localhost, 127.0.0.1 or [::1] are allowed")
	errAuthorize    = errors.New("not authorized")
)

// publicReason is what a client is told about a refusal: the loopback
// rules in full, an Authorize hook's error not (it may say more about the
// credentials than their holder should read).
func publicReason(err error) string {
	if errors.Is(err, errLoopbackOnly) || errors.Is(err, errLoopbackHost) {
		return err.Error()
	}
	return errAuthorize.Error()
}

// authorize applies cfg.Authorize, or the loopback rules without one.
func (h *handler) authorize(r *http.Request) (err error) {
	if f := h.cfg.Authorize; f != nil {
		defer func() {
			if p := recover(); p != nil {
				h.log.Error("queuekit: admin: Authorize panicked; request refused", "panic", fmt.Sprint(p))
				err = errAuthorize
			}
		}()
		return f(r)
	}
	host, _, serr := net.SplitHostPort(r.RemoteAddr)
	ip, perr := netip.ParseAddr(host)
	if serr != nil || perr != nil || !ip.Unmap().IsLoopback() {
		return errLoopbackOnly
	}
	if !loopbackHost(r.Host) {
		return errLoopbackHost
	}
	return nil
}

// loopbackHost reports whether a Host header value names this machine's
// loopback interface: localhost, an address in 127.0.0.0/8 or ::1, with or
// without a port. Other names that resolve to a loopback address (a
// rebinding attacker's) are not loopback names.
func loopbackHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	} else if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Zone() == "" && ip.Unmap().IsLoopback()
}
