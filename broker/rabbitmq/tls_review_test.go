package rabbitmq

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"
)

// newTLSProxy is a TLS listener that forwards each connection to the
// tests' broker: a TLS node of its own, with its own certificate.
func newTLSProxy(t *testing.T, cert tls.Certificate) *killProxy {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	return forwardFrom(t, ln)
}

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "queuekit test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// leaf is a server certificate for host (a DNS name or an IP address).
func (ca *testCA) leaf(t *testing.T, host string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: host},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	if ip := net.ParseIP(host); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.DNSNames = []string{host}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// amqpsURL is the tests' broker URL (its user, password and vhost) as
// amqps:// to host:port.
func amqpsURL(t *testing.T, host, port string) string {
	t.Helper()
	u, err := url.Parse(amqpURL())
	if err != nil {
		t.Fatal(err)
	}
	u.Scheme = "amqps"
	u.Host = net.JoinHostPort(host, port)
	return u.String()
}

// TestDialerTLSIsClonedPerDial (review H1): two TLS nodes with different
// host names (localhost and 127.0.0.1), each with a certificate for its own
// name only, and one Dialer.TLS with their CA. amqp091 writes the URL's host
// into the tls.Config it is given as ServerName; given the user's, every
// dial after the first verified the node against the first node's name
// ("x509: certificate is valid for …"), so failover between TLS nodes
// failed, and concurrent dials raced on the config. Each dial must use a
// copy, and the user's config must stay as the user set it.
func TestDialerTLSIsClonedPerDial(t *testing.T) {
	needBroker(t)
	ca := newTestCA(t)
	a := newTLSProxy(t, ca.leaf(t, "localhost"))
	b := newTLSProxy(t, ca.leaf(t, "127.0.0.1"))
	cfg := &tls.Config{RootCAs: ca.pool}
	c, err := NewConnection(Dialer{URLs: []string{amqpsURL(t, "localhost", a.port()), amqpsURL(t, "127.0.0.1", b.port())}, TLS: cfg})
	if err != nil {
		t.Fatal(err)
	}
	defer c.abort()
	// Both nodes in turn: after a connection is lost, the next dial starts
	// with the other node.
	var nodes []string
	for i := range 2 {
		_, l, err := c.getLink()
		if err != nil {
			t.Fatalf("dial %d: %v", i+1, err)
		}
		nodes = append(nodes, l.node)
		l.drop()
		waitFor(t, 5*time.Second, "the dropped connection to close", func() bool {
			c.mu.Lock()
			defer c.mu.Unlock()
			return c.cur.IsClosed()
		})
	}
	if nodes[0] == nodes[1] {
		t.Errorf("dialled %v; want both nodes", nodes)
	}
	if cfg.ServerName != "" {
		t.Errorf("Dialer.TLS.ServerName = %q after the dials; want it unchanged (empty)", cfg.ServerName)
	}

	// A ServerName the user set is kept: the node with the other name is
	// refused.
	named := &tls.Config{RootCAs: ca.pool, ServerName: "localhost"}
	c2, err := NewConnection(Dialer{URL: amqpsURL(t, "127.0.0.1", a.port()), TLS: named})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.abort()
	if _, err := c2.get(); err != nil {
		t.Errorf("dial with ServerName localhost to the localhost node by IP: %v", err)
	}
	c3, err := NewConnection(Dialer{URL: amqpsURL(t, "127.0.0.1", b.port()), TLS: named})
	if err != nil {
		t.Fatal(err)
	}
	defer c3.abort()
	_, err = c3.get()
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("dial with ServerName localhost to the 127.0.0.1 node = %v; want a certificate error", err)
	}
}
