package rabbitmq

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/queuekit/queuekit/broker"
	amqp "github.com/rabbitmq/amqp091-go"
)

// DefaultURL is the URL used when a configuration leaves it empty.
const DefaultURL = "amqp://guest:guest@localhost:5672/"

// Dialer settles how to reach the broker. Its zero value dials DefaultURL.
type Dialer struct {
	// URL is the amqp:// or amqps:// URL of the broker (default DefaultURL).
	// Its password never appears in errors or logs.
	URL string
	// TLS configures TLS for amqps:// URLs (default: the system roots and the
	// URL's host name).
	TLS *tls.Config
	// Dial opens the network connection (default: net.Dialer with a 10s
	// timeout). Use it for proxies, custom resolvers or tests.
	Dial func(network, addr string) (net.Conn, error)
	// Heartbeat is the AMQP heartbeat interval (default 10s): a dead peer is
	// noticed within about twice this.
	Heartbeat time.Duration
	// Name is the connection name shown in the management UI
	// (default "queuekit <program> <pid>").
	Name string
}

func (d Dialer) url() string {
	if d.URL == "" {
		return DefaultURL
	}
	return d.URL
}

func (d Dialer) validate() error {
	raw := d.url()
	uri, err := amqp.ParseURI(raw)
	if err != nil {
		return fmt.Errorf("%w: rabbitmq: URL %s: %v", broker.ErrInvalidConfig, RedactURL(raw), redactText(err.Error(), raw))
	}
	if uri.Scheme != "amqp" && uri.Scheme != "amqps" {
		return fmt.Errorf("%w: rabbitmq: URL %s: scheme must be amqp or amqps", broker.ErrInvalidConfig, RedactURL(raw))
	}
	if u, err := url.Parse(raw); err == nil && u.Opaque != "" {
		// "amqp:user:pass@host" has no "//": net/url reads it as opaque,
		// and amqp091 would dial its default, localhost:5672, as guest —
		// another broker than the one named.
		return fmt.Errorf("%w: rabbitmq: URL %s: missing \"//\" after the scheme (want amqp://user:pass@host:port/vhost)", broker.ErrInvalidConfig, RedactURL(raw))
	}
	if d.Heartbeat < 0 {
		return fmt.Errorf("%w: rabbitmq: negative heartbeat %v", broker.ErrInvalidConfig, d.Heartbeat)
	}
	return nil
}

// dialTimeout bounds the TCP connect and, after it, the TLS and AMQP
// handshakes of the default dial (amqp091 clears the deadline once the
// connection is open).
const dialTimeout = 10 * time.Second

// dial opens an AMQP connection. The network connection it opens is passed
// to track before any handshake, so that its owner can close it at any time
// (see Connection.abort); when track returns false, dial gives up. ctx
// cancels the default TCP connect (a Dialer.Dial of the user's cannot be
// interrupted).
func (d Dialer) dial(ctx context.Context, track func(net.Conn) bool) (*amqp.Connection, error) {
	raw := d.url()
	cfg := amqp.Config{
		Heartbeat:       d.Heartbeat,
		TLSClientConfig: d.TLS,
		Locale:          "en_US",
		Properties:      amqp.NewConnectionProperties(),
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = 10 * time.Second
	}
	cfg.Dial = func(network, addr string) (net.Conn, error) {
		var (
			c   net.Conn
			err error
		)
		if d.Dial != nil {
			c, err = d.Dial(network, addr)
		} else {
			nd := net.Dialer{Timeout: dialTimeout}
			if c, err = nd.DialContext(ctx, network, addr); err == nil {
				// What amqp.DefaultDial does: heartbeats have not started
				// yet, so a broker that stops answering during the
				// handshakes must not stall the dial forever.
				if err = c.SetDeadline(time.Now().Add(dialTimeout)); err != nil {
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
		return c, nil
	}
	name := d.Name
	if name == "" {
		name = fmt.Sprintf("queuekit %s %d", progName(), os.Getpid())
	}
	cfg.Properties.SetClientConnectionName(name)
	c, err := amqp.DialConfig(raw, cfg)
	if err != nil {
		return nil, fmt.Errorf("rabbitmq: dial %s: %w", RedactURL(raw), RedactError(err, raw))
	}
	return c, nil
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

	// sockMu guards socks and aborted. It is never held while dialling (the
	// dial only takes it to register its socket), so that abort never waits
	// for a dial: it is what ends one.
	sockMu     sync.Mutex
	socks      map[net.Conn]struct{}         // the network connections of cur and of a dial in progress
	curSock    net.Conn                      // cur's, to forget it when cur is replaced
	sockOf     map[*amqp.Connection]net.Conn // cur's socket, for link.drop
	aborted    bool
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
		return nil, link{}, fmt.Errorf("rabbitmq: open channel: %w", err)
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
	return conn, link{sock: c.sockOf[conn], frameMax: conn.Config.FrameSize}, nil
}

func (c *Connection) get() (*amqp.Connection, error) {
	c.init()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.isAborted() {
		return nil, ErrConnectionClosed
	}
	if c.cur != nil && !c.cur.IsClosed() {
		return c.cur, nil
	}
	var sock net.Conn
	conn, err := c.d.dial(c.dialCtx, func(s net.Conn) bool {
		c.sockMu.Lock()
		defer c.sockMu.Unlock()
		if c.aborted {
			return false
		}
		c.socks[s] = struct{}{}
		sock = s
		return true
	})
	c.sockMu.Lock()
	if c.curSock != nil {
		delete(c.socks, c.curSock) // the old connection is closed: nothing to abort there
		c.curSock = nil
	}
	clear(c.sockOf)
	if err != nil {
		if sock != nil {
			delete(c.socks, sock)
		}
		c.sockMu.Unlock()
		if c.isAborted() {
			return nil, fmt.Errorf("%w (%w)", ErrConnectionClosed, err)
		}
		return nil, err
	}
	c.curSock = sock
	c.sockOf[conn] = sock
	c.sockMu.Unlock()
	// The library sends the close reason on this channel without blocking
	// when it has room (it does: capacity 1, one error per connection), so
	// nobody needs to read it; IsClosed tells us the rest.
	conn.NotifyClose(make(chan *amqp.Error, 1))
	c.cur = conn
	return conn, nil
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
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	c.init()
	c.cancelDial()
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
