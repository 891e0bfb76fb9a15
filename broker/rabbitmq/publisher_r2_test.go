package rabbitmq

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// Review R2 HIGH-1: a Publisher's channel that dies under concurrent
// publishes (here: a 404 for a missing exchange) is dropped by every
// Publish that sees it dead; confirmChannel.close closed its quit channel
// unguarded, so all but the first panicked with "close of closed channel".
func TestR2ConcurrentPublishesToAMissingExchangeDoNotPanic(t *testing.T) {
	needBroker(t)
	pub, err := NewPublisher(PublisherConfig{Dialer: Dialer{URL: amqpURL()}, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(context.Background())
	var panics, errs atomic.Int64
	for round := 0; round < 10; round++ {
		var wg sync.WaitGroup
		for g := 0; g < 32; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					if r := recover(); r != nil {
						panics.Add(1)
					}
				}()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if err := pub.Publish(ctx, "queuekit-no-such-exchange", &broker.Message{Key: []byte("k"), Body: []byte("x")}); err != nil {
					errs.Add(1)
				}
			}()
		}
		wg.Wait()
	}
	t.Logf("errors %d, panics %d (of 320 publishes)", errs.Load(), panics.Load())
	if panics.Load() > 0 {
		t.Fatalf("%d publishes panicked", panics.Load())
	}
	if errs.Load() != 320 {
		t.Fatalf("%d of 320 publishes to a missing exchange failed, want all", errs.Load())
	}
}

// Review R2 HIGH-1: confirmChannel.close is called by every Publish that
// saw the channel dead: it must be idempotent, concurrently too.
func TestR2ConfirmChannelCloseIsIdempotent(t *testing.T) {
	needBroker(t)
	conn := rawConn(t)
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	cc, err := newConfirmChannel(ch, link{}, false)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var panics atomic.Int64
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				if recover() != nil {
					panics.Add(1)
				}
			}()
			cc.close()
		}()
	}
	wg.Wait()
	if panics.Load() > 0 {
		t.Fatalf("%d of 8 concurrent closes panicked", panics.Load())
	}
}

// Review R2 HIGH-1: a panic inside a settlement (the consumer runtime
// recovers it) left settling set, so the delivery could never be settled
// again and held its prefetch slot until the channel closed. Here the
// dead-letter publisher is missing, so DeadLetter panics; a second
// settlement must be possible (it panics again), not ErrAlreadySettled.
func TestR2APanicInASettlementDoesNotLeaveItInProgress(t *testing.T) {
	needBroker(t)
	ch, err := rawConn(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	s := &Source{cfg: Config{Queue: "q"}} // no dlPub: DeadLetter panics
	sess := newSession(1, ch, link{}, "tag", nil, nil, nil)
	d := &delivery{s: s, sess: sess, msg: broker.Message{ID: "m"}}
	settle := func() (err error, panicked bool) {
		defer func() {
			if recover() != nil {
				panicked = true
			}
		}()
		return d.DeadLetter(context.Background(), broker.Reason{Err: "boom"}), false
	}
	if err, panicked := settle(); !panicked {
		t.Fatalf("DeadLetter without a dead-letter publisher = %v, want a panic", err)
	}
	if err, panicked := settle(); !panicked {
		t.Fatalf("second DeadLetter after a panic = %v, want it to run (and panic again)", err)
	}
}
