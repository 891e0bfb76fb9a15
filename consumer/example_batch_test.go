package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/retry"
)

// A batch consumer hands its handler up to MaxSize messages at once, for
// one bulk insert instead of a round trip per message. Rows the store
// refuses are failed alone with BatchFailures: a bad payload is
// dead-lettered at once (retry.Permanent), the rest of the batch is
// acknowledged.
func ExampleNewBatch() {
	mb := memory.NewBroker()
	ctx, cancel := context.WithCancel(context.Background())
	for _, body := range []string{"ann", "bob", "", "cy", "dee"} {
		_ = mb.Publish(ctx, "signups", &broker.Message{Body: []byte(body)})
	}

	var mu sync.Mutex
	var table []string // the "database"
	insert := func(rows []string) {
		mu.Lock()
		defer mu.Unlock()
		table = append(table, rows...) // one statement for every row: INSERT … VALUES (…), (…), …
	}

	h := consumer.BatchHandlerFunc(func(ctx context.Context, msgs []*broker.Message) error {
		rows := make([]string, 0, len(msgs))
		failed := map[int]error{}
		for i, m := range msgs {
			if len(m.Body) == 0 {
				failed[i] = retry.Permanent(errors.New("empty name"))
				continue
			}
			rows = append(rows, string(m.Body))
		}
		insert(rows) // a plain error here would fail (and redeliver) the whole batch
		fmt.Printf("inserted %d rows in one call\n", len(rows))
		mu.Lock()
		if len(table) == 4 {
			cancel() // done: stop gracefully once this batch is settled
		}
		mu.Unlock()
		return consumer.BatchFailures(failed) // nil when every row went in
	})

	// The prefetch is at least MaxSize × concurrency, so that a batch can fill.
	src, _ := mb.Source("signups", memory.SourceConfig{Prefetch: 10})
	c, err := consumer.NewBatch(src, h, consumer.Batch{MaxSize: 10, MaxWait: 50 * time.Millisecond},
		consumer.WithLogger(exampleLogger))
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := c.Run(ctx); err != nil {
		fmt.Println(err)
	}
	st := mb.Stats("signups")
	fmt.Printf("table %s; acked %d, dead-lettered %d (%s)\n", strings.Join(table, ","), st.Acked, st.DeadLettered,
		mb.DeadLetters("signups")[0].Header[broker.HeaderError])
	// Output:
	// inserted 4 rows in one call
	// table ann,bob,cy,dee; acked 4, dead-lettered 1 (empty name)
}
