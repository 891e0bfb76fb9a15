package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// The quick start runs to completion on the in-memory broker, with what its
// README shows: the good orders acked, the undecodable one dead-lettered on
// its first delivery, the panicking one after the budget of 3, the flaky one
// retried into success.
func TestQuickstartRuns(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, &out, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatalf("run = %v", err)
	}
	text := out.String()
	t.Log("\n" + text)
	for _, want := range []string{
		"orders: 100 published, 98 acked, 2 dead-lettered, 0 still queued\n",
		"saved 98 orders\n",
		"dead letter orders-13 after 1 attempt(s): queuekit: decode JSON body of message orders-13 into main.Order:",
		"dead letter orders-77 after 3 attempt(s): panic: nil pointer in the discount code\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if ctx.Err() != nil {
		t.Error("run ended by the test's deadline, not by settling every message")
	}
}
