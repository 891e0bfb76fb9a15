package rabbitmq

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/queuekit/queuekit/broker"
	amqp "github.com/rabbitmq/amqp091-go"
)

// DefaultURL is the URL used when a configuration leaves it empty.
const DefaultURL = "amqp://guest:guest@localhost:5672/"

// Dialer settles how to reach the broker: one node (URL) or the nodes of a
// cluster (URLs). Its zero value dials DefaultURL.
type Dialer struct {
	// URL is the amqp:// or amqps:// URL of the broker (default DefaultURL).
	// Its password never appears in errors or logs. Set URL or URLs, not
	// both.
	URL string
	// URLs are the URLs of the nodes of a cluster, for failover. Each
	// connection tries them in an order of its own (shuffled once, when the
	// Source, Publisher or Connection is made, so that clients spread over
	// the nodes) and takes the first that answers; when its connection is
	// lost, it redials starting with the node after the one it had, so that
	// it moves to a live node at once. When no node answers, the dial fails
	// with an error that names each node (passwords redacted), and the
	// Source or Publisher retries with its reconnect backoff. A node that
	// refuses the user (wrong credentials, no access to the vhost) is
	// logged at error level (at most once a minute) and the other nodes are
	// used; the Source or Publisher gives up for good only when every node
	// refuses so, never while one is merely unreachable. Every URL is
	// validated by the constructor: each names a host, and no node (host,
	// port and vhost) is listed twice. A one-element URLs is the same as
	// URL; an empty one (nil or not) is the same as none: URL, or
	// DefaultURL when URL is empty too.
	URLs []string
	// TLS configures TLS for amqps:// URLs (default: the system roots and the
	// URL's host name). Each dial uses a copy: when its ServerName is empty,
	// each node is verified against the host name of its own URL; a
	// ServerName set here is used for every node. The Dialer never modifies
	// it.
	TLS *tls.Config
	// Dial opens the network connection (default: net.Dialer with a 10s
	// timeout). Use it for proxies, custom resolvers or tests. It bounds its
	// own connect; the TLS and AMQP handshakes on the connection it returns
	// are bounded by the Dialer (10s, or the URL's connection_timeout
	// parameter in milliseconds), as on the default path, so that a node
	// that accepts connections and never answers does not hold the dial and
	// the next URL is tried.
	Dial func(network, addr string) (net.Conn, error)
	// Heartbeat is the AMQP heartbeat interval (default 10s): a dead peer is
	// noticed within about twice this.
	Heartbeat time.Duration
	// Name is the connection name shown in the management UI
	// (default "queuekit <program> <pid>").
	Name string
}

// urls returns the URLs to dial, in the order given (at least one).
func (d Dialer) urls() []string {
	switch {
	case len(d.URLs) > 0:
		return d.URLs
	case d.URL == "":
		return []string{DefaultURL}
	default:
		return []string{d.URL}
	}
}

func (d Dialer) validate() error {
	if d.URL != "" && len(d.URLs) > 0 {
		return fmt.Errorf("%w: rabbitmq: Dialer has both URL and URLs; set one (URLs for the nodes of a cluster)", broker.ErrInvalidConfig)
	}
	for i, raw := range d.URLs {
		if raw == "" {
			return fmt.Errorf("%w: rabbitmq: Dialer.URLs[%d] is empty", broker.ErrInvalidConfig, i)
		}
	}
	seen := map[string]int{} // node and vhost → index in URLs
	for i, raw := range d.urls() {
		label := "URL"
		if len(d.URLs) > 0 {
			label = fmt.Sprintf("URLs[%d]", i)
		}
		if err := validateURL(label, raw); err != nil {
			return err
		}
		if len(d.URLs) == 0 {
			continue
		}
		uri, _ := amqp.ParseURI(raw) // valid: checked above
		key := fmt.Sprintf("%s://%s/%s", uri.Scheme, net.JoinHostPort(strings.ToLower(uri.Host), fmt.Sprint(uri.Port)), uri.Vhost)
		if j, ok := seen[key]; ok {
			return fmt.Errorf("%w: rabbitmq: Dialer.%s %s names the same node and vhost as URLs[%d]; list each node once",
				broker.ErrInvalidConfig, label, RedactURL(raw), j)
		}
		seen[key] = i
	}
	if d.Heartbeat < 0 {
		return fmt.Errorf("%w: rabbitmq: negative heartbeat %v", broker.ErrInvalidConfig, d.Heartbeat)
	}
	return nil
}

// validateURL checks raw, the Dialer's field label.
func validateURL(label, raw string) error {
	uri, err := amqp.ParseURI(raw)
	if err != nil {
		return fmt.Errorf("%w: rabbitmq: %s %s: %v", broker.ErrInvalidConfig, label, RedactURL(raw), redactText(err.Error(), raw))
	}
	if uri.Scheme != "amqp" && uri.Scheme != "amqps" {
		return fmt.Errorf("%w: rabbitmq: %s %s: scheme must be amqp or amqps", broker.ErrInvalidConfig, label, RedactURL(raw))
	}
	if u, err := url.Parse(raw); err == nil && u.Opaque != "" {
		// "amqp:user:pass@host" has no "//": net/url reads it as opaque,
		// and amqp091 would dial its default, localhost:5672, as guest —
		// another broker than the one named.
		return fmt.Errorf("%w: rabbitmq: %s %s: missing \"//\" after the scheme (want amqp://user:pass@host:port/vhost)", broker.ErrInvalidConfig, label, RedactURL(raw))
	}
	if u, err := url.Parse(raw); err == nil && u.Hostname() == "" {
		// amqp091 would dial its default, localhost: another broker than
		// the one meant.
		return fmt.Errorf("%w: rabbitmq: %s %s: no host (want amqp://user:pass@host:port/vhost)", broker.ErrInvalidConfig, label, RedactURL(raw))
	}
	if uri.Port <= 0 || uri.Port > 65535 {
		return fmt.Errorf("%w: rabbitmq: %s %s: port %d cannot be dialled (leave it out for the default)", broker.ErrInvalidConfig, label, RedactURL(raw), uri.Port)
	}
	if uri.ConnectionTimeout < 0 {
		return fmt.Errorf("%w: rabbitmq: %s %s: negative connection_timeout %d (milliseconds; leave it out for the default)", broker.ErrInvalidConfig, label, RedactURL(raw), uri.ConnectionTimeout)
	}
	return nil
}

// dialTimeout bounds the TCP connect and, after it, the TLS and AMQP
// handshakes of a dial (amqp091 clears the deadline once the connection is
// open), unless the URL's connection_timeout parameter (milliseconds) says
// otherwise.
const dialTimeout = 10 * time.Second

// dial opens an AMQP connection to raw, one of d's URLs. The network
// connection it opens is passed to track before any handshake, so that its
// owner can close it at any time (see Connection.abort); when track returns
// false, dial gives up. ctx cancels the default TCP connect (a Dialer.Dial
// of the user's cannot be interrupted: it bounds its own connect).
//
// The TLS and AMQP handshakes are bounded by the handshake timeout on both
// paths: heartbeats have not started yet, so a node that accepts the TCP
// connection and never answers would otherwise hold the dial forever, and
// the next URL would never be tried.
func (d Dialer) dial(ctx context.Context, raw string, track func(net.Conn) bool) (*amqp.Connection, error) {
	timeout := dialTimeout
	if uri, err := amqp.ParseURI(raw); err == nil && uri.ConnectionTimeout > 0 {
		timeout = time.Duration(uri.ConnectionTimeout) * time.Millisecond
	}
	cfg := amqp.Config{
		Heartbeat: d.Heartbeat,
		// A copy per dial: amqp091 writes the URL's host into the config's
		// ServerName when it is empty, so the user's config would verify
		// every later node against the first one's name (and concurrent
		// dials would race on it). A ServerName the user set is kept.
		TLSClientConfig: d.TLS.Clone(),
		Locale:          "en_US",
		Properties:      amqp.NewConnectionProperties(),
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = 10 * time.Second
	}
	// hs bounds the handshakes on a connection of the user's Dial: a
	// deadline set on it would replace one the Dial set itself (shorter,
	// perhaps), so a timer closes it instead, unless the dial finished
	// first. The timer is started by cfg.Dial and stopped below, both on
	// this goroutine; mu orders its firing against the end of the dial.
	var hs struct {
		mu       sync.Mutex
		timer    *time.Timer
		finished bool
		fired    bool
	}
	var rc *readErrConn // set by cfg.Dial, on this goroutine
	cfg.Dial = func(network, addr string) (net.Conn, error) {
		var (
			c   net.Conn
			err error
		)
		if d.Dial != nil {
			if c, err = d.Dial(network, addr); err == nil && c == nil {
				err = errors.New("Dialer.Dial returned no connection and no error")
			}
			if err == nil {
				hs.timer = time.AfterFunc(timeout, func() {
					hs.mu.Lock()
					defer hs.mu.Unlock()
					if !hs.finished {
						hs.fired = true
						_ = c.Close()
					}
				})
			}
		} else {
			nd := net.Dialer{Timeout: timeout}
			if c, err = nd.DialContext(ctx, network, addr); err == nil {
				// What amqp.DefaultDial does.
				if err = c.SetDeadline(time.Now().Add(timeout)); err != nil {
					_ = c.Close()
				}
			}
		}
		if err != nil {
			return nil, err
		}
		if track != nil && !track(c) {
			_ = c.Close()
			return nil, ErrConnectionClosed
		}
		rc = &readErrConn{Conn: c}
		return rc, nil
	}
	name := d.Name
	if name == "" {
		name = fmt.Sprintf("queuekit %s %d", progName(), os.Getpid())
	}
	cfg.Properties.SetClientConnectionName(name)
	c, err := amqp.DialConfig(raw, cfg)
	hs.mu.Lock()
	hs.finished = true
	fired := hs.fired
	hs.mu.Unlock()
	if hs.timer != nil {
		hs.timer.Stop()
	}
	if fired {
		if c != nil {
			_ = c.Close()
		}
		return nil, fmt.Errorf("rabbitmq: dial %s: no handshake within %v (the node accepted the connection and did not answer): %w",
			RedactURL(raw), timeout, os.ErrDeadlineExceeded)
	}
	if errors.Is(err, amqp.ErrCredentials) && rc != nil {
		if rerr := rc.readErr(); rerr != nil && (errors.Is(rerr, os.ErrDeadlineExceeded) || errors.Is(rerr, net.ErrClosed)) {
			// amqp091 reports any end of the socket after start-ok as
			// ErrCredentials (403, not from the server), since RabbitMQ
			// refuses a user by closing the connection (it sends a
			// connection.close only to clients that advertise
			// authentication_failure_close, a capability amqp091 overwrites
			// with its own). A refusal is the peer closing the socket (EOF,
			// or a reset: RabbitMQ 4 resets it); a read that timed out (the
			// handshake deadline) or whose socket was closed here (the
			// handshake timer of a Dialer.Dial, or Close) is a node that
			// stalled: transient, so not ErrCredentials (unfixable). A node
			// that drops the connection after start-ok cannot be told from
			// a refusal: it stays ErrCredentials, fatal only when every
			// node does so.
			return nil, fmt.Errorf("rabbitmq: dial %s: the connection was lost during the AMQP handshake, after the credentials were sent: %w",
				RedactURL(raw), RedactError(rerr, raw))
		}
	}
	if err != nil {
		return nil, fmt.Errorf("rabbitmq: dial %s: %w", RedactURL(raw), RedactError(err, raw))
	}
	return c, nil
}

// readErrConn is a dial's network connection that keeps the first error its
// reads returned: how the socket ended, which amqp091 does not report for a
// handshake that failed after start-ok (see Dialer.dial).
type readErrConn struct {
	net.Conn
	mu  sync.Mutex
	err error
}

func (c *readErrConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		c.mu.Lock()
		if c.err == nil {
			c.err = err
		}
		c.mu.Unlock()
	}
	return n, err
}

func (c *readErrConn) readErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func progName() string {
	if len(os.Args) == 0 {
		return "go"
	}
	p := os.Args[0]
	for i := len(p) - 1; i >= 0; i-- {
		if p[i] == '/' {
			return p[i+1:]
		}
	}
	return p
}

// A Connection is an AMQP connection that redials by itself, to be shared by
// several Sources and Publishers (each opens its own channel on it). Without
// one, each Source and Publisher owns a connection of its own.
//
// A Connection is safe for concurrent use. It dials lazily, when a Source or
// Publisher first needs a channel, and again whenever the connection it had
// was closed. Close closes it for good; the Sources and Publishers using it
// then fail with ErrConnectionClosed, so close them first. The zero value is
// not usable: make one with NewConnection.
type Connection struct {
	d Dialer

	mu     sync.Mutex // held while dialling, so that concurrent users share one dial
	cur    *amqp.Connection
	closed bool
	// addrs is d's URLs in this connection's order (shuffled once); next is
	// the index of the one the next dial tries first. Both under mu.
	addrs []string
	next  int
	// log receives the refusals of single nodes (nil: slog.Default()), set
	// by the Source or Publisher that owns the connection; refusedAt is
	// when each node's refusal was last logged. Under mu.
	log       *slog.Logger
	refusedAt map[string]time.Time

	// sockMu guards socks and aborted. It is never held while dialling (the
	// dial only takes it to register its socket), so that abort never waits
	// for a dial: it is what ends one.
	sockMu     sync.Mutex
	socks      map[net.Conn]struct{}         // the network connections of cur and of a dial in progress
	curSock    net.Conn                      // cur's, to forget it when cur is replaced
	curNode    string                        // cur's node: its URL, redacted
	sockOf     map[*amqp.Connection]net.Conn // cur's socket, for link.drop
	aborted    bool
	stopping   bool            // set by stopDial: no dial starts or goes on
	dialCtx    context.Context // cancelled by abort: ends a default TCP connect
	cancelDial context.CancelFunc
	initOnce   sync.Once // makes the above, so that a Connection{} literal works too
}

// ErrConnectionClosed is returned when a Connection was closed by its owner.
var ErrConnectionClosed = errors.New("rabbitmq: connection closed")

// NewConnection returns a Connection that dials with d. It does not dial yet.
// It returns an error wrapping broker.ErrInvalidConfig when d is invalid.
func NewConnection(d Dialer) (*Connection, error) {
	if err := d.validate(); err != nil {
		return nil, err
	}
	return newConnection(d), nil
}

func newConnection(d Dialer) *Connection { return &Connection{d: d} }

func (c *Connection) init() {
	c.initOnce.Do(func() {
		c.addrs = slices.Clone(c.d.urls())
		rand.Shuffle(len(c.addrs), func(i, j int) { c.addrs[i], c.addrs[j] = c.addrs[j], c.addrs[i] })
		c.socks = map[net.Conn]struct{}{}
		c.sockOf = map[*amqp.Connection]net.Conn{}
		c.dialCtx, c.cancelDial = context.WithCancel(context.Background())
	})
}

// channel opens a channel on the current connection, dialling a new one if
// there is none or it is closed.
func (c *Connection) channel() (*amqp.Channel, error) {
	ch, _, err := c.channelOn()
	return ch, err
}

// link is what a channel's users need to know of the connection under it.
type link struct {
	// node is the URL of the node the connection is to, redacted, for
	// errors and logs.
	node string
	// sock is the network connection: closing it (drop) ends every write
	// blocked on it, and the connection with it.
	sock net.Conn
	// frameMax is the negotiated frame size (0: no limit).
	frameMax int
}

// drop closes the network connection under l without a word to the broker,
// as abort does, but only that one: the Connection redials when next
// needed. It is for a write that blocks on a socket that takes no more
// bytes (amqp091 writes with no deadline, and every other write of the
// connection waits behind it): nothing else can be sent on it anyway, and
// the broker requeues the unacknowledged deliveries when it sees it go.
func (l link) drop() {
	if l.sock != nil {
		_ = l.sock.Close()
	}
}

// dropCurrent is link.drop for the current connection's socket, for a
// caller that has no link yet (it waits for a channel to open).
func (c *Connection) dropCurrent() {
	c.init()
	c.sockMu.Lock()
	sock := c.curSock
	c.sockMu.Unlock()
	link{sock: sock}.drop()
}

// channelOn is channel, with the link of the connection it opened it on.
func (c *Connection) channelOn() (*amqp.Channel, link, error) {
	conn, l, err := c.getLink()
	if err != nil {
		return nil, link{}, err
	}
	ch, err := conn.Channel()
	if err != nil {
		// If the connection was lost between get and Channel, the next call
		// redials.
		return nil, link{}, fmt.Errorf("rabbitmq: open channel on %s: %w", l.node, err)
	}
	return ch, l, nil
}

func (c *Connection) getLink() (*amqp.Connection, link, error) {
	conn, err := c.get()
	if err != nil {
		return nil, link{}, err
	}
	c.sockMu.Lock()
	defer c.sockMu.Unlock()
	return conn, link{sock: c.sockOf[conn], frameMax: conn.Config.FrameSize, node: c.curNode}, nil
}

func (c *Connection) get() (*amqp.Connection, error) {
	c.init()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.isStopped() {
		return nil, ErrConnectionClosed
	}
	if c.cur != nil && !c.cur.IsClosed() {
		return c.cur, nil
	}
	// The nodes are tried in turn, from the one after the node of the
	// connection that was lost (or that the last dial failed on): a node
	// that just died is tried last.
	var (
		sock net.Conn
		conn *amqp.Connection
		raw  string
		errs []error
	)
	for k := range c.addrs {
		i := (c.next + k) % len(c.addrs)
		raw = c.addrs[i]
		var err error
		sock = nil
		conn, err = c.d.dial(c.dialCtx, raw, func(s net.Conn) bool {
			c.sockMu.Lock()
			defer c.sockMu.Unlock()
			if c.aborted || c.stopping {
				return false
			}
			c.socks[s] = struct{}{}
			sock = s
			return true
		})
		if err == nil {
			c.next = (i + 1) % len(c.addrs)
			break
		}
		errs = append(errs, err)
		if len(c.addrs) > 1 && unfixable(err, false) {
			c.logRefusal(raw, err)
		}
		if sock != nil {
			c.sockMu.Lock()
			delete(c.socks, sock)
			c.sockMu.Unlock()
		}
		if c.isStopped() {
			break
		}
	}
	c.sockMu.Lock()
	if c.curSock != nil {
		delete(c.socks, c.curSock) // the old connection is closed: nothing to abort there
		c.curSock = nil
	}
	c.curNode = ""
	clear(c.sockOf)
	if conn == nil {
		c.sockMu.Unlock()
		err := dialErr(errs)
		if c.isStopped() {
			return nil, fmt.Errorf("%w (%w)", ErrConnectionClosed, err)
		}
		return nil, err
	}
	if c.stopping || c.aborted {
		// stopDial ran after the handshake: its socket may be closed.
		delete(c.socks, sock)
		c.sockMu.Unlock()
		_ = conn.Close()
		return nil, ErrConnectionClosed
	}
	c.curSock = sock
	c.curNode = RedactURL(raw)
	c.sockOf[conn] = sock
	c.sockMu.Unlock()
	// The library sends the close reason on this channel without blocking
	// when it has room (it does: capacity 1, one error per connection), so
	// nobody needs to read it; IsClosed tells us the rest.
	conn.NotifyClose(make(chan *amqp.Error, 1))
	c.cur = conn
	return conn, nil
}

// refusalLogEvery is how often a node that keeps refusing is logged.
const refusalLogEvery = time.Minute

// logRefusal logs, at error level and at most once a refusalLogEvery per
// node, that node raw of several refused the connection for a reason
// reconnecting cannot fix (wrong credentials, no access to the vhost): the
// other nodes are used meanwhile, and the dial fails for good only when
// they all refuse (see unfixable), so this log is what shows a
// misconfigured node. Called with mu held.
func (c *Connection) logRefusal(raw string, err error) {
	node := RedactURL(raw)
	now := time.Now()
	if last, ok := c.refusedAt[node]; ok && now.Sub(last) < refusalLogEvery {
		return
	}
	if c.refusedAt == nil {
		c.refusedAt = map[string]time.Time{}
	}
	c.refusedAt[node] = now
	log := c.log
	if log == nil {
		log = slog.Default()
	}
	log.Error("rabbitmq: a node refused the connection (check its URL's credentials and permissions); using the other nodes",
		"node", node, "error", err)
}

// dialErr is the error of a dial that found no node: the one node's error,
// or all of them, in the order tried.
func dialErr(errs []error) error {
	if len(errs) == 1 {
		return errs[0]
	}
	return &nodesError{errs: errs}
}

// nodesError is the error of a dial to several nodes that all failed. Each
// error names its node (redacted); errors.Is and errors.As see each.
type nodesError struct{ errs []error }

func (e *nodesError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "rabbitmq: none of the %d nodes answered: ", len(e.errs))
	for i, err := range e.errs {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(err.Error())
	}
	return b.String()
}

func (e *nodesError) Unwrap() []error { return e.errs }

// dialled reports whether the connection's last dial succeeded (the
// connection may have been lost since).
func (c *Connection) dialled() bool {
	c.init()
	c.sockMu.Lock()
	defer c.sockMu.Unlock()
	return c.curNode != ""
}

// isStopped reports whether abort or stopDial was called: a dial neither
// starts nor tries another node.
func (c *Connection) isStopped() bool {
	c.sockMu.Lock()
	defer c.sockMu.Unlock()
	return c.aborted || c.stopping
}

// stopDial ends a dial in progress, for the Close of the connection's
// owner: its TCP connect is cancelled, the network connection it opened is
// closed (which ends its TLS or AMQP handshake at once, whatever Dial made
// it), no other node is tried, and no dial starts again: get fails with
// ErrConnectionClosed. The current connection is left open, for its close
// handshake.
func (c *Connection) stopDial() {
	c.init()
	c.sockMu.Lock()
	defer c.sockMu.Unlock()
	c.stopping = true
	c.cancelDial()
	for s := range c.socks {
		if s != c.curSock {
			_ = s.Close()
		}
	}
}

func (c *Connection) isAborted() bool {
	c.sockMu.Lock()
	defer c.sockMu.Unlock()
	return c.aborted
}

// abort closes the network connection under the AMQP one, and any a dial in
// progress opened, without a word to the broker: what waits for an answer
// from the broker (a close handshake, a declaration, a confirm) fails at
// once, the client library's goroutines exit, and the broker requeues every
// unacknowledged delivery when it sees the connection go (at once, or after
// its heartbeat timeout when the network is what hangs). The Connection is
// closed for good. It is what Close(ctx) of a Source or Publisher does, on
// a connection it owns, when ctx ends before the broker answered.
func (c *Connection) abort() {
	c.init()
	c.sockMu.Lock()
	defer c.sockMu.Unlock()
	c.aborted = true
	c.cancelDial()
	for s := range c.socks {
		_ = s.Close()
	}
}

// Close closes the connection for good, with the AMQP close handshake. Close
// the Sources and Publishers that use it first: they fail with
// ErrConnectionClosed afterwards. Close is bounded by ctx: when ctx ends
// before the broker answered (a hung connection), it closes the network
// connection without the handshake, which also ends what the Sources and
// Publishers on it still wait for, and returns an error wrapping ctx's
// error. It is idempotent.
func (c *Connection) Close(ctx context.Context) error {
	done := make(chan error, 1)
	go func() { done <- c.close() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	c.abort()
	waitAborted(done)
	return fmt.Errorf("rabbitmq: close connection: gave up waiting for the broker: %w", ctx.Err())
}

// close is Close without a bound: the owner of the connection calls it on a
// goroutine that abort ends.
func (c *Connection) close() error {
	c.stopDial() // or close would wait for the dial, up to its handshake timeout per node
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	if c.cur != nil && !c.cur.IsClosed() {
		if err := c.cur.Close(); err != nil && !errors.Is(err, amqp.ErrClosed) && !c.isAborted() {
			return fmt.Errorf("rabbitmq: close connection: %w", err)
		}
	}
	return nil
}

// sleepCtx waits for d or until ctx or stop is done; it reports whether the
// full wait elapsed.
func sleepCtx(ctx context.Context, stop <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-stop:
		return false
	}
}
