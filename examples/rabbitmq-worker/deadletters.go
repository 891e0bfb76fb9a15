package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/retry"
)

// readDeadLetters reads up to max messages of the dead-letter queue without
// removing them (they are never acknowledged, so the broker puts them back
// when the channel closes), and returns them with the number of messages the
// queue held. It reads no more than a passive declaration counted first, so
// it ends even while dead letters keep arriving.
//
// The adapter has no API to browse a dead-letter queue yet, so this reads it
// with amqp091-go directly. The dead-letter issue gives the library one
// (List/Redrive/Purge on every broker); this reader goes away then.
func readDeadLetters(ctx context.Context, rawURL, dlq string, max int) ([]deadLetter, int, error) {
	var out []deadLetter
	var queued int
	err := retry.Do(ctx, retry.Exponential(100*time.Millisecond, time.Second), func(ctx context.Context) error {
		out = nil
		conn, err := dial(rawURL)
		if err != nil {
			return err
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			return err
		}
		defer ch.Close()
		q, err := ch.QueueDeclarePassive(dlq, true, false, false, false, nil)
		if err != nil {
			return fmt.Errorf("read %s: %w", dlq, err)
		}
		queued = q.Messages
		for range min(queued, max) {
			if err := ctx.Err(); err != nil {
				return err
			}
			d, ok, err := ch.Get(dlq, false)
			if err != nil {
				return fmt.Errorf("read %s: %w", dlq, err)
			}
			if !ok {
				return nil
			}
			attempts, _ := strconv.Atoi(fmt.Sprint(d.Headers[broker.HeaderAttempts]))
			out = append(out, deadLetter{
				ID:        d.MessageId,
				Attempts:  attempts,
				Permanent: fmt.Sprint(d.Headers[broker.HeaderPermanent]) == "true",
				Error:     fmt.Sprint(d.Headers[broker.HeaderError]),
			})
		}
		return nil
	})
	slices.SortFunc(out, func(a, b deadLetter) int { return strings.Compare(a.ID, b.ID) })
	return out, queued, err
}
