package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/queuekit/queuekit/broker"
	amqp "github.com/rabbitmq/amqp091-go"
)

// Queue types.
const (
	// Classic is RabbitMQ's classic queue (the default).
	Classic = "classic"
	// Quorum is a replicated quorum queue. Its x-delivery-count header makes
	// Message.Attempt exact across requeues and consumer restarts.
	Quorum = "quorum"
)

// Topology says what a Source makes sure of before it subscribes, and again
// after every reconnect. Everything declared is durable. The zero value
// declares the queue (classic), a dead-letter exchange and queue, and a retry
// queue, if they do not exist.
//
// By default an object that exists is used as it is: the source checks it
// with a passive declaration and declares (and binds) only what is missing.
// Set Strict to declare everything actively on every connect, which makes a
// queue whose arguments differ fail fast with PRECONDITION_FAILED; the price
// is a metadata write on the broker for every declaration on every connect.
type Topology struct {
	// Passive declares nothing: the source only checks that the queue, the
	// dead-letter exchange and the retry queue exist, for infrastructure that
	// is provisioned elsewhere. A missing one is a fatal error
	// (broker.Fatal), not a reason to retry.
	Passive bool
	// Strict declares every exchange, queue and binding actively on every
	// connect, so that a mismatch with an existing one (PRECONDITION_FAILED)
	// is a fatal error instead of going unnoticed.
	Strict bool
	// QueueType is Classic (default) or Quorum.
	QueueType string
	// QueueArgs are extra x-arguments for the queue (x-max-length…). A
	// classic queue with a length limit must set x-overflow to
	// reject-publish (or reject-publish-dlx): drop-head, RabbitMQ's default,
	// is refused (see the package doc, Topology).
	QueueArgs amqp.Table
	// Exchanges are declared before the bindings.
	Exchanges []Exchange
	// Bindings bind the queue to exchanges.
	Bindings []Binding
	// DeadLetterExchange receives dead letters, with the queue name as the
	// routing key (default "<queue>.dlx", a direct exchange).
	DeadLetterExchange string
	// DeadLetterQueue is bound to DeadLetterExchange with the queue name
	// (default "<queue>.dlq").
	DeadLetterQueue string
	// RetryQueue holds messages given back with a delay (RequeueAfter) until
	// their per-message TTL expires; it dead-letters them back to the queue
	// through the default exchange (default "<queue>.retry"). Because RabbitMQ
	// expires messages only at the head of a queue, a message with a short
	// delay may wait behind one with a longer delay.
	RetryQueue string
}

// Exchange is an exchange to declare.
type Exchange struct {
	// Name is the exchange's name. Required.
	Name string
	// Kind is direct (default), fanout, topic or headers.
	Kind string
}

// Binding binds the source's queue to an exchange.
type Binding struct {
	// Exchange is the exchange to bind to. Required: the default exchange
	// routes by queue name without bindings.
	Exchange string
	// RoutingKey is the binding key (ignored by fanout exchanges).
	RoutingKey string
}

// resolve fills the defaults and validates.
func (t *Topology) resolve(queue string) error {
	switch t.QueueType {
	case "":
		t.QueueType = Classic
	case Classic, Quorum:
	default:
		return fmt.Errorf("%w: rabbitmq: queue type %q, want %q or %q", broker.ErrInvalidConfig, t.QueueType, Classic, Quorum)
	}
	if t.DeadLetterExchange == "" {
		t.DeadLetterExchange = queue + ".dlx"
	}
	if t.DeadLetterQueue == "" {
		t.DeadLetterQueue = queue + ".dlq"
	}
	if t.RetryQueue == "" {
		t.RetryQueue = queue + ".retry"
	}
	if err := t.checkOverflow(queue); err != nil {
		return err
	}
	if t.RetryQueue == queue || t.DeadLetterQueue == queue {
		return fmt.Errorf("%w: rabbitmq: the retry and dead-letter queues must differ from the queue %q", broker.ErrInvalidConfig, queue)
	}
	for i := range t.Exchanges {
		if t.Exchanges[i].Name == "" {
			return fmt.Errorf("%w: rabbitmq: exchange %d has no name", broker.ErrInvalidConfig, i)
		}
		if t.Exchanges[i].Kind == "" {
			t.Exchanges[i].Kind = amqp.ExchangeDirect
		}
	}
	for i, b := range t.Bindings {
		if b.Exchange == "" {
			return fmt.Errorf("%w: rabbitmq: binding %d has no exchange (the default exchange cannot be bound)", broker.ErrInvalidConfig, i)
		}
	}
	return nil
}

// checkOverflow refuses a classic queue that drops messages at its head when
// full (x-max-length or x-max-length-bytes, with x-overflow drop-head, the
// default). On such a queue every way of giving a message back loses one
// when the queue is full: the copy a classic-queue Requeue publishes makes
// the broker drop the head, a message nobody has seen, without
// dead-lettering it; and basic.nack with requeue (a release, the broker's own
// requeue when a channel closes) puts the message back at the head, where
// RabbitMQ 3.10 drops it at once. reject-publish keeps every message: the
// broker refuses the copy while the queue is full (Requeue then nacks with
// requeue, counting the attempt itself), and a nack with requeue is not a
// publish, so it is neither refused nor evicts anything.
func (t *Topology) checkOverflow(queue string) error {
	if t.QueueType != Classic {
		return nil
	}
	_, byCount := t.QueueArgs["x-max-length"]
	_, byBytes := t.QueueArgs["x-max-length-bytes"]
	if !byCount && !byBytes {
		return nil
	}
	overflow := "drop-head" // RabbitMQ's default
	if v, ok := t.QueueArgs["x-overflow"]; ok {
		s, ok := v.(string)
		if !ok {
			return fmt.Errorf("%w: rabbitmq: queue %q: x-overflow is a %T, want a string", broker.ErrInvalidConfig, queue, v)
		}
		overflow = s
	}
	if overflow != "drop-head" {
		return nil
	}
	return fmt.Errorf("%w: rabbitmq: classic queue %q has a length limit with overflow drop-head: "+
		"a message given back to a full queue (a retry, a pause, a reconnect) would make the broker drop one silently; "+
		`set "x-overflow" to "reject-publish" (or "reject-publish-dlx"), or use QueueType Quorum`, broker.ErrInvalidConfig, queue)
}

func (t *Topology) fail(what string, err error) error {
	err = fmt.Errorf("rabbitmq: declare %s: %w", what, err)
	if unfixable(err, t.Passive) {
		return broker.Fatal(err)
	}
	return err
}

// retryArgs are the arguments of the retry queue: a classic queue (per-message
// TTL with dead-lettering on expiry is what it does best, and a delay queue
// needs no replication) that dead-letters expired messages back to queue
// through the default exchange.
func retryArgs(queue string) amqp.Table {
	return amqp.Table{
		amqp.QueueTypeArg:           Classic,
		"x-dead-letter-exchange":    "",
		"x-dead-letter-routing-key": queue,
	}
}

func (t *Topology) queueArgs() amqp.Table {
	args := amqp.Table{}
	for k, v := range t.QueueArgs {
		args[k] = v
	}
	args[amqp.QueueTypeArg] = t.QueueType
	return args
}

// ensure makes the topology exist, on channels it opens with open and closes.
//
// Checking before declaring is the default, not Strict, because an active
// declaration is a metadata write: RabbitMQ 3.10 consumed about half as fast
// for seconds after one in our benchmark, and a source declares on every
// reconnect.
// In the default mode it checks each object passively and declares only what
// is missing (a failed passive check closes its channel, so it opens another);
// Strict and Passive go to declare. The error is wrapped with broker.Fatal
// when retrying cannot fix it.
func (t *Topology) ensure(open func() (*amqp.Channel, error), queue string) error {
	if t.Strict || t.Passive {
		ch, err := open()
		if err != nil {
			return err
		}
		defer ch.Close()
		return t.declare(ch, queue)
	}
	ch, err := open()
	if err != nil {
		return err
	}
	defer func() {
		if ch != nil { // nil when reopening failed below
			_ = ch.Close()
		}
	}()
	// exists runs a passive check; on NOT_FOUND it replaces the closed channel.
	exists := func(what string, check func(*amqp.Channel) error) (bool, error) {
		err := check(ch)
		if err == nil {
			return true, nil
		}
		var ae *amqp.Error
		if !errors.As(err, &ae) || ae.Code != amqp.NotFound {
			return false, t.fail(what, err)
		}
		// Reopen into a fresh variable: a failed open returns a nil
		// channel, and closing that would panic in amqp091-go.
		nc, err := open()
		if err != nil {
			ch = nil
			return false, err
		}
		ch = nc
		return false, nil
	}
	created := map[string]bool{} // exchanges declared in this pass: their bindings are new too
	for _, x := range t.Exchanges {
		ok, err := exists("exchange "+x.Name, func(ch *amqp.Channel) error {
			return ch.ExchangeDeclarePassive(x.Name, x.Kind, true, false, false, false, nil)
		})
		if err != nil {
			return err
		}
		if !ok {
			if err := ch.ExchangeDeclare(x.Name, x.Kind, true, false, false, false, nil); err != nil {
				return t.fail(fmt.Sprintf("exchange %q", x.Name), err)
			}
			created[x.Name] = true
		}
	}
	ok, err := exists("queue "+queue, func(ch *amqp.Channel) error {
		_, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		return err
	})
	if err != nil {
		return err
	}
	if !ok {
		if _, err := ch.QueueDeclare(queue, true, false, false, false, t.queueArgs()); err != nil {
			return t.fail(fmt.Sprintf("queue %q", queue), err)
		}
	}
	for _, b := range t.Bindings {
		if ok && !created[b.Exchange] {
			continue
		}
		if err := ch.QueueBind(queue, b.RoutingKey, b.Exchange, false, nil); err != nil {
			return t.fail(fmt.Sprintf("binding of %q to %q", queue, b.Exchange), err)
		}
	}
	dlxOK, err := exists("dead-letter exchange "+t.DeadLetterExchange, func(ch *amqp.Channel) error {
		return ch.ExchangeDeclarePassive(t.DeadLetterExchange, amqp.ExchangeDirect, true, false, false, false, nil)
	})
	if err != nil {
		return err
	}
	if !dlxOK {
		if err := ch.ExchangeDeclare(t.DeadLetterExchange, amqp.ExchangeDirect, true, false, false, false, nil); err != nil {
			return t.fail(fmt.Sprintf("dead-letter exchange %q", t.DeadLetterExchange), err)
		}
	}
	dlqOK, err := exists("dead-letter queue "+t.DeadLetterQueue, func(ch *amqp.Channel) error {
		_, err := ch.QueueDeclarePassive(t.DeadLetterQueue, true, false, false, false, nil)
		return err
	})
	if err != nil {
		return err
	}
	dlqDown := false
	if !dlqOK {
		if _, err := ch.QueueDeclare(t.DeadLetterQueue, true, false, false, false, amqp.Table{amqp.QueueTypeArg: t.QueueType}); err != nil {
			if !queueNodeDown(err) {
				return t.fail(fmt.Sprintf("dead-letter queue %q", t.DeadLetterQueue), err)
			}
			// It exists, on a node that is down (see queueNodeDown).
			dlqDown = true
			if ch, err = open(); err != nil {
				return err
			}
		}
	}
	if (!dlxOK || !dlqOK) && !dlqDown {
		if err := ch.QueueBind(t.DeadLetterQueue, queue, t.DeadLetterExchange, false, nil); err != nil {
			return t.fail(fmt.Sprintf("binding of %q to %q", t.DeadLetterQueue, t.DeadLetterExchange), err)
		}
	}
	retryOK, err := exists("retry queue "+t.RetryQueue, func(ch *amqp.Channel) error {
		_, err := ch.QueueDeclarePassive(t.RetryQueue, true, false, false, false, nil)
		return err
	})
	if err != nil {
		return err
	}
	if !retryOK {
		if _, err := ch.QueueDeclare(t.RetryQueue, true, false, false, false, retryArgs(queue)); err != nil && !queueNodeDown(err) {
			return t.fail(fmt.Sprintf("retry queue %q", t.RetryQueue), err)
		}
	}
	return nil
}

// queueNodeDown reports whether err is RabbitMQ's answer to the declaration
// of a classic queue that exists on a cluster node that is down: 404
// NOT_FOUND, "home node … of durable queue … is down or inaccessible", or,
// while the node stops (stop_app), "queue … process is stopped by
// supervisor" (the reason text is the only thing that tells it from a queue
// that does not exist). It is never fatal, Passive or not (see unfixable). The retry queue is always a classic queue, and so is the
// dead-letter queue of a classic topology: while its node is down, the
// source still subscribes to its own queue (a quorum queue keeps working
// through the loss of a node), and only what needs that queue (RequeueAfter,
// dead-lettering) fails and is retried until the node is back.
func queueNodeDown(err error) bool {
	var ae *amqp.Error
	return errors.As(err, &ae) && ae.Code == amqp.NotFound &&
		(strings.Contains(ae.Reason, "is down or inaccessible") || strings.Contains(ae.Reason, "process is stopped by supervisor"))
}

// declare declares everything actively (Strict), or, when Passive, checks that
// it exists, on ch. An error closes ch.
func (t *Topology) declare(ch *amqp.Channel, queue string) error {
	fail := t.fail
	if t.Passive {
		if _, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil); err != nil {
			return fail(fmt.Sprintf("queue %q (passive)", queue), err)
		}
		if err := ch.ExchangeDeclarePassive(t.DeadLetterExchange, amqp.ExchangeDirect, true, false, false, false, nil); err != nil {
			return fail(fmt.Sprintf("dead-letter exchange %q (passive)", t.DeadLetterExchange), err)
		}
		if _, err := ch.QueueDeclarePassive(t.RetryQueue, true, false, false, false, nil); err != nil && !queueNodeDown(err) {
			return fail(fmt.Sprintf("retry queue %q (passive)", t.RetryQueue), err)
		}
		return nil
	}
	for _, x := range t.Exchanges {
		if err := ch.ExchangeDeclare(x.Name, x.Kind, true, false, false, false, nil); err != nil {
			return fail(fmt.Sprintf("exchange %q", x.Name), err)
		}
	}
	if _, err := ch.QueueDeclare(queue, true, false, false, false, t.queueArgs()); err != nil {
		return fail(fmt.Sprintf("queue %q", queue), err)
	}
	for _, b := range t.Bindings {
		if err := ch.QueueBind(queue, b.RoutingKey, b.Exchange, false, nil); err != nil {
			return fail(fmt.Sprintf("binding of %q to %q", queue, b.Exchange), err)
		}
	}
	if err := ch.ExchangeDeclare(t.DeadLetterExchange, amqp.ExchangeDirect, true, false, false, false, nil); err != nil {
		return fail(fmt.Sprintf("dead-letter exchange %q", t.DeadLetterExchange), err)
	}
	if _, err := ch.QueueDeclare(t.DeadLetterQueue, true, false, false, false, amqp.Table{amqp.QueueTypeArg: t.QueueType}); err != nil {
		if !queueNodeDown(err) {
			return fail(fmt.Sprintf("dead-letter queue %q", t.DeadLetterQueue), err)
		}
		// On a node that is down (see queueNodeDown): the error closed
		// ch, and the retry queue is the last to declare.
		return nil
	}
	if err := ch.QueueBind(t.DeadLetterQueue, queue, t.DeadLetterExchange, false, nil); err != nil {
		return fail(fmt.Sprintf("binding of %q to %q", t.DeadLetterQueue, t.DeadLetterExchange), err)
	}
	if _, err := ch.QueueDeclare(t.RetryQueue, true, false, false, false, retryArgs(queue)); err != nil && !queueNodeDown(err) {
		return fail(fmt.Sprintf("retry queue %q", t.RetryQueue), err)
	}
	return nil
}

// DeclareTopology makes sure that queue and its topology exist, as a Source
// for queue with Topology t does each time it connects, on a connection of
// its own that it closes before returning. A program that has a Source calls
// Source.DeclareTopology instead; this function is for programs that only
// publish to queue, before any consumer of it has connected (an API whose
// workers run elsewhere): until the queue exists, the Publisher's mandatory
// publishes to it come back with ErrReturned. With t.Passive it declares
// nothing and checks, as a passive Source does, that the queue, the
// dead-letter exchange and the retry queue exist.
//
// It returns an error wrapping broker.ErrInvalidConfig for an invalid
// Dialer, queue or Topology; one for which broker.IsFatal is true when
// retrying cannot help (ACCESS_REFUSED, wrong credentials, a queue that exists
// with other arguments in Strict mode, a missing object in Passive mode); and
// ctx's error when ctx ends first, after closing its network connection. A
// custom Dialer.Dial in progress then goes on in the background until it
// returns: it must bound itself.
func DeclareTopology(ctx context.Context, d Dialer, queue string, t Topology) error {
	if queue == "" {
		return fmt.Errorf("%w: rabbitmq: DeclareTopology needs a queue name", broker.ErrInvalidConfig)
	}
	if err := d.validate(); err != nil {
		return err
	}
	t.Exchanges = slices.Clone(t.Exchanges) // resolve fills defaults in
	if err := t.resolve(queue); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	conn := newConnection(d)
	err := declareOn(ctx, conn, queue, &t, nil)
	if ctx.Err() != nil {
		conn.abort() // ends the declarations, and the goroutine doing them
	} else {
		_ = conn.close()
	}
	return err
}

// declareOn runs t.ensure on channels of conn, bounded by ctx: when ctx ends
// first, it returns ctx's error, and the declarations go on until they
// finish or conn is aborted or closed. ops, if not nil, counts the goroutine
// that runs the declarations.
func declareOn(ctx context.Context, conn *Connection, queue string, t *Topology, ops *sync.WaitGroup) error {
	done := make(chan error, 1)
	if ops != nil {
		ops.Add(1)
	}
	go func() {
		if ops != nil {
			defer ops.Done()
		}
		err := t.ensure(conn.channel, queue)
		if err != nil && unfixable(err, false) && !broker.IsFatal(err) {
			err = broker.Fatal(err) // e.g. ACCESS_REFUSED from the dial
		}
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("rabbitmq: declare the topology of %q: %w", queue, ctx.Err())
	}
}
