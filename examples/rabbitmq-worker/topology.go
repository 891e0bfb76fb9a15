package main

import (
	"errors"
	"fmt"
	"strings"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker/rabbitmq"
	"github.com/queuekit/queuekit/retry"
)

// topology is the consumers' Topology, which the program also declares
// before publishing: a quorum queue (its x-delivery-count makes the delivery
// budget exact, even across restarts), "<queue>.dlx" and "<queue>.dlq" for
// dead letters, "<queue>.retry" for delayed retries.
var topology = rabbitmq.Topology{QueueType: rabbitmq.Quorum}

// topologyObject is one queue or exchange of the default topology of a queue.
type topologyObject struct {
	name     string
	exchange bool
}

func (o topologyObject) String() string {
	if o.exchange {
		return "the exchange " + o.name
	}
	return o.name
}

// objects lists the default topology of queue, in the order deleteTopology
// deletes it: the retry queue before the queue its messages expire into,
// the dead-letter queue before the exchange bound to it.
func objects(queue string) []topologyObject {
	return []topologyObject{
		{name: queue + ".retry"}, {name: queue}, {name: queue + ".dlq"}, {name: queue + ".dlx", exchange: true},
	}
}

// checkUnused returns a permanent error if any object of queue's default
// topology exists: a run on a fresh name must create all of them, since it
// deletes them at the end.
func checkUnused(rawURL, queue string) error {
	s := &session{url: rawURL}
	defer s.close()
	for _, o := range objects(queue) {
		found, _, err := s.exists(o)
		if err != nil {
			return err
		}
		if found {
			return retry.Permanent(fmt.Errorf("%s exists already; the run would not have created it, so it stops here", o))
		}
	}
	return nil
}

// deleteTopology deletes queue, queue.retry, queue.dlq and the exchange
// queue.dlx (the default topology the source declared; the adapter deletes
// nothing), each only if it is unused (no consumer, no binding) and, except
// queue.dlq when dropDeadLetters is set, empty. It keeps the queue while its
// retry queue exists, since the messages waiting there expire into it, and
// the exchange while the dead-letter queue is bound to it. It prints what it
// deleted and what it kept, and returns how many objects it kept.
//
// dropDeadLetters is for a run that created the topology itself and has read
// its dead letters back; a queue named by the user is never deleted with
// messages in it.
func deleteTopology(rawURL, queue string, dropDeadLetters bool, out *printer) (kept int, err error) {
	s := &session{url: rawURL}
	defer s.close()
	gone := map[string]bool{}
	var deleted []string
	for _, o := range objects(queue) {
		anyway := dropDeadLetters && o.name == queue+".dlq"
		found, q, err := s.exists(o)
		if err != nil {
			return kept, err
		}
		if !found {
			gone[o.name] = true
			continue
		}
		var why string
		switch {
		case o.name == queue && !gone[queue+".retry"]:
			why = "its retry queue " + queue + ".retry is kept, and the messages waiting there expire into it"
		case q.Messages > 0 && !anyway:
			why = fmt.Sprintf("it holds %d messages", q.Messages)
		case q.Consumers > 0:
			why = fmt.Sprintf("it has %d consumers", q.Consumers)
		default:
			why, err = s.remove(o, anyway)
			if err != nil {
				return kept, err
			}
		}
		if why != "" {
			out.printf("kept %s: %s\n", o, why)
			kept++
			continue
		}
		gone[o.name] = true
		deleted = append(deleted, o.String())
	}
	if len(deleted) > 0 {
		out.printf("deleted %s\n", strings.Join(deleted, ", "))
	} else if kept == 0 {
		out.printf("nothing to delete: %s and its .retry, .dlq and .dlx do not exist\n", queue)
	}
	return kept, nil
}

// session is a plain amqp091-go connection for checking and deleting the
// topology, opened again when the broker closed it.
type session struct {
	url  string
	conn *amqp.Connection
}

// channel returns a new channel: a failed declaration or deletion closes
// its channel (and some errors the connection), so each gets its own.
func (s *session) channel() (*amqp.Channel, error) {
	if s.conn == nil || s.conn.IsClosed() {
		s.close()
		conn, err := dial(s.url)
		if err != nil {
			return nil, err
		}
		s.conn = conn
	}
	return s.conn.Channel()
}

func (s *session) close() {
	if s.conn != nil {
		_ = s.conn.Close()
		s.conn = nil
	}
}

// exists reports whether o exists, with its message and consumer counts for
// a queue, with a passive declaration.
func (s *session) exists(o topologyObject) (bool, amqp.Queue, error) {
	ch, err := s.channel()
	if err != nil {
		return false, amqp.Queue{}, err
	}
	defer ch.Close()
	var q amqp.Queue
	if o.exchange {
		err = ch.ExchangeDeclarePassive(o.name, amqp.ExchangeDirect, true, false, false, false, nil)
	} else {
		q, err = ch.QueueDeclarePassive(o.name, true, false, false, false, nil)
	}
	var ae *amqp.Error
	if errors.As(err, &ae) && ae.Code == amqp.NotFound {
		return false, amqp.Queue{}, nil
	}
	if err != nil {
		return false, amqp.Queue{}, fmt.Errorf("check %s: %w", o, err)
	}
	return true, q, nil
}

// remove deletes o if it is unused and, unless anyway, empty. It returns why
// the broker kept it, or an error if it could not ask.
func (s *session) remove(o topologyObject, anyway bool) (string, error) {
	ch, err := s.channel()
	if err != nil {
		return "", err
	}
	defer ch.Close()
	if o.exchange {
		err = ch.ExchangeDelete(o.name, true, false)
	} else {
		_, err = ch.QueueDelete(o.name, true, !anyway, false)
	}
	var ae *amqp.Error
	if errors.As(err, &ae) && ae.Code == amqp.NotImplemented && !o.exchange {
		// A quorum queue (RabbitMQ 3.x) refuses if-unused and if-empty, and
		// closes the connection. deleteTopology checked a moment ago that the
		// queue had no consumer and (unless anyway) no message; check again
		// and delete it plainly. A message published between this check and
		// the deletion would be lost: a window of one round trip, on a queue
		// of the example.
		found, q, err := s.exists(o)
		switch {
		case err != nil:
			return "", err
		case !found:
			return "", nil
		case q.Messages > 0 && !anyway:
			return fmt.Sprintf("it holds %d messages", q.Messages), nil
		case q.Consumers > 0:
			return fmt.Sprintf("it has %d consumers", q.Consumers), nil
		}
		ch, err := s.channel()
		if err != nil {
			return "", err
		}
		defer ch.Close()
		_, err = ch.QueueDelete(o.name, false, false, false)
		if err != nil {
			return "", fmt.Errorf("delete %s: %w", o, err)
		}
		return "", nil
	}
	if errors.As(err, &ae) && ae.Code == amqp.PreconditionFailed {
		if o.exchange {
			return "a queue is still bound to it", nil
		}
		return "the broker refused: " + ae.Reason, nil
	}
	if err != nil {
		return "", fmt.Errorf("delete %s: %w", o, err)
	}
	return "", nil
}
