package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/retry"
)

// Limits of an order, checked when it is accepted and again when it is
// consumed (a message can reach the queue by another way than this API).
const (
	maxItemLen  = 100
	maxQuantity = 1000
	maxBodySize = 64 << 10
)

// OrderRequest is the body of POST /orders.
type OrderRequest struct {
	Item     string `json:"item"`
	Quantity int    `json:"quantity"`
}

// Order is what the API publishes and the consumer processes.
type Order struct {
	ID         string    `json:"id"`
	Item       string    `json:"item"`
	Quantity   int       `json:"quantity"`
	AcceptedAt time.Time `json:"accepted_at"`
}

// decodeOrderRequest reads and validates a POST /orders body, which r limits
// with http.MaxBytesReader. Its errors are meant for the client: they say what
// is wrong, without Go type names (an *http.MaxBytesError is returned as is).
func decodeOrderRequest(r io.Reader) (OrderRequest, error) {
	var req OrderRequest
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		var syn *json.SyntaxError
		var typ *json.UnmarshalTypeError
		var tooLarge *http.MaxBytesError
		switch {
		case errors.As(err, &tooLarge):
			return req, err
		case errors.Is(err, io.EOF):
			return req, errors.New(`empty body: want a JSON object such as {"item": "book", "quantity": 2}`)
		case errors.As(err, &syn):
			return req, fmt.Errorf("malformed JSON at byte %d", syn.Offset)
		case errors.As(err, &typ) && typ.Field == "":
			return req, errors.New(`body must be a JSON object such as {"item": "book", "quantity": 2}`)
		case errors.As(err, &typ):
			return req, fmt.Errorf("field %q must be a JSON %s", typ.Field, jsonKind(typ.Type.Kind().String()))
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			return req, fmt.Errorf("unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
		case errors.Is(err, io.ErrUnexpectedEOF):
			return req, errors.New("malformed JSON: unexpected end of body")
		default:
			return req, fmt.Errorf("malformed JSON: %v", err)
		}
	}
	if dec.More() {
		return req, errors.New("body must hold one JSON object")
	}
	return req, req.validate()
}

func jsonKind(goKind string) string {
	switch goKind {
	case "int", "int64":
		return "integer"
	case "string":
		return "string"
	default:
		return goKind
	}
}

func (r OrderRequest) validate() error {
	switch item := strings.TrimSpace(r.Item); {
	case item == "":
		return errors.New(`"item" is required`)
	case utf8.RuneCountInString(item) > maxItemLen:
		return fmt.Errorf(`"item" must be at most %d characters`, maxItemLen)
	}
	if r.Quantity < 1 || r.Quantity > maxQuantity {
		return fmt.Errorf(`"quantity" must be an integer from 1 to %d`, maxQuantity)
	}
	return nil
}

// maxIdempotencyKey bounds the Idempotency-Key header.
const maxIdempotencyKey = 200

// newOrderID returns an id such as "ord_3f9a0c1b2d4e5f60718293a4": derived
// from the client's idempotency key when there is one, so that a retried
// request names the same order, and random otherwise.
func newOrderID(idempotencyKey string) (string, error) {
	var b [12]byte
	if idempotencyKey != "" {
		sum := sha256.Sum256([]byte(idempotencyKey))
		copy(b[:], sum[:])
	} else if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return "ord_" + hex.EncodeToString(b[:]), nil
}

// Order statuses, as GET /orders/:id reports them.
const (
	statusAccepted  = "accepted"  // published; not processed yet
	statusProcessed = "processed" // the consumer handled it
	statusFailed    = "failed"    // dead-lettered: it will not be processed
)

// OrderStatus is what GET /orders/:id returns.
type OrderStatus struct {
	ID        string    `json:"id"`
	Status    string    `json:"status"`
	Item      string    `json:"item,omitempty"`
	Quantity  int       `json:"quantity,omitempty"`
	Attempts  int       `json:"attempts,omitempty"`
	Error     string    `json:"error,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}

// store records the status of orders. It stands for the service's database:
// it lives in memory, so a restarted process knows only the orders it
// accepted or processed itself. Recording is keyed by id, so a redelivered
// order is harmless (processing is idempotent).
type store struct {
	mu     sync.Mutex
	orders map[string]*OrderStatus
	// counts of distinct orders, for the shutdown report
	accepted, processed, failed int
}

func newStore() *store { return &store{orders: make(map[string]*OrderStatus)} }

func (s *store) get(id string) (OrderStatus, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o, ok := s.orders[id]
	if !ok {
		return OrderStatus{}, false
	}
	return *o, true
}

func (s *store) accept(o Order) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.orders[o.ID]; ok {
		return // the same order again (same Idempotency-Key): counted once
	}
	s.accepted++
	s.orders[o.ID] = &OrderStatus{ID: o.ID, Status: statusAccepted, Item: o.Item, Quantity: o.Quantity, UpdatedAt: time.Now()}
}

// forget undoes accept for an order whose publish failed: the client got an
// error, so the order does not exist.
func (s *store) forget(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if o, ok := s.orders[id]; ok && o.Status == statusAccepted {
		delete(s.orders, id)
		s.accepted--
	}
}

// finish records a final status. It reports whether this is the order's
// first final status (false for a redelivery of a processed order).
func (s *store) finish(id, status string, attempts int, errText string, o *Order) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, ok := s.orders[id]
	if !ok {
		rec = &OrderStatus{ID: id}
		s.orders[id] = rec
	}
	if rec.Status == statusProcessed || rec.Status == statusFailed {
		return false
	}
	rec.Status, rec.Attempts, rec.Error, rec.UpdatedAt = status, attempts, errText, time.Now()
	if o != nil {
		rec.Item, rec.Quantity = o.Item, o.Quantity
	}
	if status == statusProcessed {
		s.processed++
	} else {
		s.failed++
	}
	return true
}

func (s *store) counts() (accepted, processed, failed int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted, s.processed, s.failed
}

// processOrder is the business logic: reserve stock for the order. It takes
// processTime, standing for a database call, and honours ctx.
func (s *service) processOrder(ctx context.Context, m *consumer.Message, o Order) error {
	if o.ID == "" {
		o.ID = orderID(m)
	}
	if err := (OrderRequest{Item: o.Item, Quantity: o.Quantity}).validate(); err != nil {
		// Retrying cannot fix a bad order: dead-letter it at once.
		return retry.Permanent(fmt.Errorf("order %s: %w", o.ID, err))
	}
	if s.cfg.processTime > 0 {
		t := time.NewTimer(s.cfg.processTime)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
	if s.store.finish(o.ID, statusProcessed, m.Attempt, "", &o) {
		// The end-to-end test counts processed orders by id from this line.
		middleware.Logger(ctx).Info("order processed", "order", o.ID, "item", o.Item, "quantity", o.Quantity)
	}
	return nil
}
