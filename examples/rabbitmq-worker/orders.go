package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"github.com/queuekit/queuekit/broker"
)

// Order is the payload of the queue.
type Order struct {
	ID       string `json:"id"`
	Account  string `json:"account"`
	Amount   int    `json:"amount_cents"`
	Currency string `json:"currency"`
}

// batch is the orders the example publishes to queue, through the default
// exchange (which routes by Key, the queue's name).
func batch(queue string) []*broker.Message {
	var msgs []*broker.Message
	add := func(id, body string) {
		msgs = append(msgs, &broker.Message{
			ID:     id,
			Key:    []byte(queue),
			Header: map[string]string{broker.HeaderContentType: broker.ContentTypeJSON},
			Body:   []byte(body),
		})
	}
	for i := 1; i <= 6; i++ {
		o, _ := json.Marshal(Order{ID: "order-" + strconv.Itoa(i), Account: "acct-" + strconv.Itoa(100+i), Amount: 1000 * i, Currency: "EUR"})
		add("order-"+strconv.Itoa(i), string(o))
	}
	// Does not decode (a string where a number belongs): dead-lettered at once.
	add("order-7", `{"id": "order-7", "account": "acct-107", "amount_cents": "seventy", "currency": "EUR"}`)
	// The ledger answers 503 twice: retried through the retry queue, then taken.
	add("order-8", `{"id": "order-8", "account": "acct-108", "amount_cents": 8000, "currency": "EUR"}`)
	// Hits a bug (a panic) every time: dead-lettered after the delivery budget.
	add("order-9", `{"id": "order-9", "account": "acct-109", "amount_cents": 9000, "currency": "CHF"}`)
	return msgs
}

// ledger stands in for the downstream service the handler posts orders to.
// It answers 503 to the first calls for some orders.
type ledger struct {
	mu          sync.Mutex
	unavailable map[string]int // order ID → 503s still to answer
}

func newLedger(unavailable map[string]int) *ledger { return &ledger{unavailable: unavailable} }

func (l *ledger) Post(ctx context.Context, orderID string, cents int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.unavailable[orderID] > 0 {
		l.unavailable[orderID]--
		return errors.New("ledger: 503 Service Unavailable")
	}
	return ctx.Err()
}

type rate struct{ num, den int }

var rates = map[string]*rate{"EUR": {1, 1}, "USD": {92, 100}, "GBP": {117, 100}}

// toEUR converts an amount to euro cents. It has a bug: a currency missing
// from rates dereferences a nil pointer. The panic is recovered and fails
// that message only; the others go on.
func toEUR(cents int, currency string) (int, error) {
	if currency == "" {
		return 0, errors.New("order has no currency")
	}
	r := rates[currency]
	return cents * r.num / r.den, nil
}

// fixedRates is rates with the currency that was missing.
var fixedRates = map[string]*rate{"EUR": {1, 1}, "USD": {92, 100}, "GBP": {117, 100}, "CHF": {107, 100}}

// toEURFixed is toEUR as the fix has it (what -redrive switches to): CHF in
// the table, and a currency missing from it an error, not a panic.
func toEURFixed(cents int, currency string) (int, error) {
	r := fixedRates[currency]
	if r == nil {
		return 0, fmt.Errorf("no exchange rate for currency %q", currency)
	}
	return cents * r.num / r.den, nil
}
