package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/retry"
	"github.com/queuekit/queuekit/sql/inbox"
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

// decodeOrderRequest reads and validates a POST /orders body (the handler
// also limits it with http.MaxBytesReader). Its errors are meant for the
// client: they say what is wrong, without Go type names. A body over
// maxBodySize returns an *http.MaxBytesError, whatever follows the object
// (issue 9: a valid object followed by megabytes of whitespace used to pass).
// The fuzz target in fuzz_test.go calls it: keep its signature.
func decodeOrderRequest(r io.Reader) (OrderRequest, error) {
	var req OrderRequest
	// The whole body is read, up to one byte past the limit, before it is
	// decoded: the decoder alone stops after the object and never sees
	// what follows it.
	body, err := io.ReadAll(io.LimitReader(r, maxBodySize+1))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		return req, err
	case err != nil:
		return req, &bodyReadError{err}
	case len(body) > maxBodySize:
		return req, &http.MaxBytesError{Limit: maxBodySize}
	}
	// encoding/json would turn invalid UTF-8 into U+FFFD silently.
	if !utf8.Valid(body) {
		return req, fmt.Errorf("body is not valid UTF-8 (at byte %d)", invalidUTF8At(body))
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		var syn *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
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
	if rest := body[dec.InputOffset():]; len(bytes.TrimLeft(rest, " \t\r\n")) > 0 {
		return req, errors.New("body must hold one JSON object")
	}
	// What is checked is what is stored, published and logged: the item
	// is trimmed first (issue 9, hostile review: the limit measured the
	// trimmed item while the order kept the padded one, so 60 KB of
	// spaces, U+00A0 or U+3000 passed the 100-character limit).
	req.Item = trimItem(req.Item)
	return req, req.validate()
}

// trimItem removes the padding around an item name: Unicode white space
// (ASCII space, U+00A0, U+3000, U+2000-U+200A, …), and U+200B (zero width
// space) and U+FEFF (byte order mark), which are invisible but not
// White_Space. White space that is a control character (tab, newline, …)
// is left for validate to refuse, as anywhere in the item.
func trimItem(s string) string {
	return strings.TrimFunc(s, func(r rune) bool {
		return (unicode.IsSpace(r) && !unicode.IsControl(r)) || r == '\u200b' || r == '\ufeff'
	})
}

// bodyReadError is a failure to read the body itself (the client went
// away, or was too slow: see net.Error's Timeout), as opposed to a body that
// is wrong.
type bodyReadError struct{ err error }

func (e *bodyReadError) Error() string { return "cannot read the body: " + e.err.Error() }
func (e *bodyReadError) Unwrap() error { return e.err }

// invalidUTF8At returns the offset of the first byte of b that is not part
// of valid UTF-8.
func invalidUTF8At(b []byte) int {
	for i := 0; i < len(b); {
		r, size := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && size <= 1 {
			return i
		}
		i += size
	}
	return len(b)
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

// validate checks an order as it is: decodeOrderRequest trims the item
// before, and an order from the queue is checked untrimmed, so that the
// length checked is the length stored. At most maxItemLen characters is at
// most 4×maxItemLen bytes of UTF-8.
func (r OrderRequest) validate() error {
	switch {
	case trimItem(r.Item) == "":
		return errors.New(`"item" is required`)
	case utf8.RuneCountInString(r.Item) > maxItemLen:
		return fmt.Errorf(`"item" must be at most %d characters (after trimming white space)`, maxItemLen)
	}
	// Item names end up in logs, pages and other systems: no control
	// characters (newlines forge log lines, ESC drives terminals), and no
	// U+FFFD, which is what encoding/json makes of invalid UTF-8 and of
	// unpaired surrogate escapes such as "\ud800" (issue 9).
	for i, c := range []rune(r.Item) {
		switch {
		case c == utf8.RuneError:
			return fmt.Errorf(`"item" must be valid UTF-8 text: character %d is U+FFFD (invalid UTF-8 or an unpaired surrogate)`, i+1)
		case unicode.IsControl(c):
			return fmt.Errorf(`"item" must not contain control characters: character %d is %U`, i+1, c)
		}
	}
	if r.Quantity < 1 || r.Quantity > maxQuantity {
		return fmt.Errorf(`"quantity" must be an integer from 1 to %d`, maxQuantity)
	}
	return nil
}

// digest identifies the order a request asks for, to tell a retried request
// from another order sent with the same Idempotency-Key. It hashes the
// decoded request, not the body's bytes, so that the same order written
// with other spacing or field order is still the same order.
func (r OrderRequest) digest() [sha256.Size]byte {
	b, _ := json.Marshal(r) // cannot fail: a string and an int
	return sha256.Sum256(b)
}

// maxIdempotencyKey bounds the Idempotency-Key header.
const maxIdempotencyKey = 200

// orderIDSecretLen is the length of the random secret stored in the
// database when ORDER_ID_SECRET is not set, and minOrderIDSecretLen the
// least a configured one must have.
const (
	orderIDSecretLen    = 32
	minOrderIDSecretLen = 16
)

// newOrderIDSecret returns a random secret for newOrderID.
func newOrderIDSecret() ([]byte, error) {
	b := make([]byte, orderIDSecretLen)
	_, err := rand.Read(b)
	return b, err
}

// newOrderID returns an id such as "ord_3f9a0c1b2d4e5f60718293a4": derived
// from the client's idempotency key when there is one, so that a retried
// request names the same order, and random otherwise.
//
// The derivation is an HMAC keyed with the server's secret: a plain hash of
// the key would let anyone who can guess a client's key compute its order's
// id and read the order (issue 9). The id is the same for one key where
// the secret is: ORDER_ID_SECRET, or else the secret kept in the database's
// settings table (database.go), which every process on that database reads.
func newOrderID(secret []byte, idempotencyKey string) (string, error) {
	var b [12]byte
	if idempotencyKey != "" {
		mac := hmac.New(sha256.New, secret)
		mac.Write([]byte(idempotencyKey))
		copy(b[:], mac.Sum(nil))
	} else if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return "ord_" + hex.EncodeToString(b[:]), nil
}

// Order statuses, as GET /orders/:id reports them.
const (
	statusAccepted  = "accepted"  // in the database with its outbox row; not processed yet
	statusProcessed = "processed" // the consumer handled it
	statusFailed    = "failed"    // dead-lettered: it will not be processed
)

// OrderStatus is what GET /orders/:id returns.
type OrderStatus struct {
	ID       string `json:"id"`
	Status   string `json:"status"`
	Item     string `json:"item,omitempty"`
	Quantity int    `json:"quantity,omitempty"`
	Attempts int    `json:"attempts,omitempty"`
	Error    string `json:"error,omitempty"`
	// ProcessedCount is how many times the order's effect was committed:
	// 1 once processed, whatever the deliveries (the inbox's promise).
	ProcessedCount int       `json:"processed_count"`
	UpdatedAt      time.Time `json:"updated_at"`
}

// processOrder is the business logic: check the order, prepare it (it
// takes -process-time, standing for a call to another service, and honours
// ctx), then apply its effect through the inbox (see applyOrder). An order
// for an unavailable item (-unavailable-items) or a bad order fails for
// good: it is dead-lettered at once, with the reason.
//
// The preparation runs outside the inbox's transaction, so that it does not
// hold a database connection (SQLite has one) for its duration; a duplicate
// delivery prepares again and then finds its key done: nothing is applied
// twice.
func (s *service) processOrder(ctx context.Context, m *broker.Message, o Order) error {
	if o.ID == "" {
		o.ID = orderID(m)
	}
	if err := (OrderRequest{Item: o.Item, Quantity: o.Quantity}).validate(); err != nil {
		// Retrying cannot fix a bad order: dead-letter it at once.
		return retry.Permanent(fmt.Errorf("order %s: %w", o.ID, err))
	}
	if s.isUnavailable(o.Item) {
		// Nor can retrying fix an order for an item the service cannot
		// supply: dead-letter it at once, with the reason. Once the item
		// is available again (the operator fixed the catalog), the dead
		// letter is redriven from /admin/ and processed.
		return retry.Permanent(fmt.Errorf("order %s: item %q is unavailable (in -unavailable-items)", o.ID, o.Item))
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
	applied := false
	err := s.db.inbox.Middleware()(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		// In the inbox's transaction: everything goes through inbox.Tx(ctx)
		// (on SQLite the pool's one connection is this transaction's).
		if err := applyOrder(ctx, inbox.Tx(ctx), o, m.Attempt, s.cfg.initialStock); err != nil {
			if errors.Is(err, errOutOfStock) {
				return retry.Permanent(err)
			}
			return err
		}
		applied = true
		return nil
	})).Handle(ctx, m)
	if err != nil {
		return err
	}
	if applied {
		// Committed with the inbox key: logged once per order. The
		// end-to-end tests count processed orders by id from this line.
		s.processed.Add(1)
		middleware.Logger(ctx).Info("order processed", "order", o.ID, "item", o.Item, "quantity", o.Quantity)
	}
	return nil
}

// setUnavailable makes items the ones processOrder refuses for good
// (-unavailable-items). It may be called at any time; tests call it to
// stand for the operator's fix.
func (s *service) setUnavailable(items []string) {
	m := make(map[string]bool, len(items))
	for _, it := range items {
		m[strings.ToLower(trimItem(it))] = true
	}
	s.unavailable.Store(&m)
}

// isUnavailable reports whether orders for item are refused for good.
func (s *service) isUnavailable(item string) bool {
	m := s.unavailable.Load()
	return m != nil && (*m)[strings.ToLower(item)]
}

// maxReasonLen bounds the reason stored with a failed order (the orders
// table's error column): a handler's error can quote a payload.
const maxReasonLen = 1000

// boundReason cuts s to at most maxReasonLen bytes, at a character
// boundary, marking the cut with "…".
func boundReason(s string) string {
	if len(s) <= maxReasonLen {
		return s
	}
	cut := maxReasonLen - len("…")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// maxOrderIDLen bounds the ids GET /orders/:id looks up: the API makes
// "ord_" and 24 hex digits; orders published by other producers carry
// their message's id.
const maxOrderIDLen = 200

// validOrderID reports whether id can be the id of a stored order: not
// empty, at most maxOrderIDLen bytes of valid UTF-8 without control
// characters. What cannot be is not looked up (issue 12 review R4 #1: on
// PostgreSQL a NUL or invalid UTF-8 failed the query, which answered 503
// "database unavailable" and logged a warning per request).
func validOrderID(id string) bool {
	if id == "" || len(id) > maxOrderIDLen || !utf8.ValidString(id) {
		return false
	}
	for _, c := range id {
		if unicode.IsControl(c) {
			return false
		}
	}
	return true
}
