package rabbitmq

import (
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
)

// Directions a tcpProxy forwards.
const (
	toBroker = iota // client → broker
	toClient        // broker → client
)

// tcpProxy forwards loopback TCP connections to the broker, and can stop
// forwarding in either direction: it keeps reading what arrives (the sender's
// writes do not block) and holds it, closes included, until thaw. A proxy
// frozen both ways stands for a hung connection: a network that drops
// everything, or a broker that stopped answering. The broker notices only
// when Close closes the proxy's side (as its heartbeat timeout would).
type tcpProxy struct {
	ln     net.Listener
	target string
	closed chan struct{}
	wg     sync.WaitGroup

	mu     sync.Mutex
	frozen [2]bool
	thawed chan struct{} // closed and replaced by thaw
	conns  []net.Conn
}

// newTCPProxy starts a proxy to the broker of amqpURL; Close runs at the
// end of the test.
func newTCPProxy(t testing.TB) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: hostPort(), closed: make(chan struct{}), thawed: make(chan struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// URL returns amqpURL with the proxy as its host.
func (p *tcpProxy) URL() string {
	u, err := url.Parse(amqpURL())
	if err != nil {
		panic(err) // the tests' own URL
	}
	u.Host = p.ln.Addr().String()
	return u.String()
}

func (p *tcpProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		b, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		select {
		case <-p.closed:
			p.mu.Unlock()
			_, _ = c.Close(), b.Close()
			return
		default:
		}
		p.conns = append(p.conns, c, b)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pump(c, b, toBroker)
		go p.pump(b, c, toClient)
	}
}

// pump copies src to dst, holding what it read while dir is frozen.
func (p *tcpProxy) pump(src, dst net.Conn, dir int) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.pass(dir) {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				_ = src.Close()
				return
			}
		}
		if err != nil {
			// A close is forwarded only when it would be: not while
			// frozen.
			if p.pass(dir) {
				if err == io.EOF {
					if tc, ok := dst.(*net.TCPConn); ok {
						_ = tc.CloseWrite()
						return
					}
				}
				_ = dst.Close()
			}
			return
		}
	}
}

// pass waits while dir is frozen; it returns false when the proxy closed.
func (p *tcpProxy) pass(dir int) bool {
	for {
		p.mu.Lock()
		frozen, thawed := p.frozen[dir], p.thawed
		p.mu.Unlock()
		if !frozen {
			return true
		}
		select {
		case <-thawed:
		case <-p.closed:
			return false
		}
	}
}

// freeze stops forwarding in the given directions.
func (p *tcpProxy) freeze(dirs ...int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, d := range dirs {
		p.frozen[d] = true
	}
}

// thaw forwards again, in both directions, what was held first.
func (p *tcpProxy) thaw() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.frozen = [2]bool{}
	close(p.thawed)
	p.thawed = make(chan struct{})
}

// Close closes the listener and every connection, both sides: the broker
// sees its connections go and requeues what they had unacknowledged.
func (p *tcpProxy) Close() {
	p.mu.Lock()
	select {
	case <-p.closed:
		p.mu.Unlock()
		return
	default:
	}
	close(p.closed)
	conns := p.conns
	p.mu.Unlock()
	_ = p.ln.Close()
	for _, c := range conns {
		_ = c.Close()
	}
	p.wg.Wait()
}
