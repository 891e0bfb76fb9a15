package rabbitmq

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// TestAmqpsDialsTLSWithTheConfiguredTLSConfig points an amqps:// URL at a TLS
// listener (an HTTP test server: the AMQP handshake after TLS fails, which is
// fine): the client must speak TLS, trust what the configured tls.Config
// trusts, refuse an unknown certificate without it, and keep the password out
// of the error.
func TestAmqpsDialsTLSWithTheConfiguredTLSConfig(t *testing.T) {
	var hellos atomic.Int64
	srv := httptest.NewUnstartedServer(http.NotFoundHandler())
	srv.TLS = &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
		hellos.Add(1)
		return nil, nil
	}}
	srv.StartTLS()
	defer srv.Close()
	url := "amqps://guest:tls-s3cret@" + srv.Listener.Addr().String() + "/"
	trusting := srv.Client().Transport.(*http.Transport).TLSClientConfig

	publish := func(cfg *tls.Config) error {
		// A 1s handshake timeout instead of the default 10s keeps the test short.
		pub, err := NewPublisher(PublisherConfig{Dialer: Dialer{URL: url, TLS: cfg, Dial: amqp.DefaultDial(time.Second)}})
		if err != nil {
			t.Fatal(err)
		}
		defer pub.Close(context.Background())
		ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
		defer cancel()
		return pub.PublishRaw(ctx, "", "q", amqp.Publishing{})
	}

	err := publish(nil) // system roots: the test certificate is unknown
	t.Logf("without the test CA: %v", err)
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("Publish over amqps without the test CA = %v; want a certificate error", err)
	}
	err = publish(trusting)
	t.Logf("with the test CA: %v", err)
	if err == nil || strings.Contains(err.Error(), "certificate") || !strings.Contains(err.Error(), "Exception (501)") {
		t.Errorf("Publish over amqps with the test CA = %v; want the TLS handshake to pass and the AMQP handshake to time out", err)
	}
	if hellos.Load() < 2 {
		t.Errorf("TLS ClientHellos = %d; want at least 2", hellos.Load())
	}
	for _, e := range []error{err} {
		if e != nil && strings.Contains(e.Error(), "tls-s3cret") {
			t.Errorf("error %q shows the password", e)
		}
	}
}

// TestPublishReturnsAtItsDeadlineWhileADialHangs dials a listener that
// accepts and never answers: the dial hangs until its handshake timeout (2s
// here), but Publish must return at its own 300ms deadline.
func TestPublishReturnsAtItsDeadlineWhileADialHangs(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns []net.Conn
	acceptDone := make(chan struct{})
	go func() {
		defer close(acceptDone)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c) // held open, never answered
		}
	}()
	pub, err := NewPublisher(PublisherConfig{Dialer: Dialer{URL: "amqp://guest:guest@" + ln.Addr().String() + "/", Dial: amqp.DefaultDial(2 * time.Second)}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = pub.PublishRaw(ctx, "", "q", amqp.Publishing{})
	took := time.Since(start)
	t.Logf("Publish = %v after %v", err, took)
	if !errors.Is(err, context.DeadlineExceeded) || took > 1500*time.Millisecond {
		t.Errorf("Publish with a hanging dial = %v after %v; want DeadlineExceeded at about 300ms", err, took)
	}
	if err := pub.Close(context.Background()); err != nil { // waits for the dial to time out
		t.Fatal(err)
	}
	_ = ln.Close()
	<-acceptDone
	for _, c := range conns {
		_ = c.Close()
	}
}
