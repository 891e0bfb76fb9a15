package kafka_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker/kafka"
)

// Regression (review 2026-11-23): with ByKey, one unsettled record kept the
// commit at its offset while the partition was fetched and handled past it
// without bound (994 records past it, i.e. all of them), all of which a crash
// would redeliver. The uncommitted window is now bounded (4×MaxInFlight).
func TestByKeyWindowPastAnUnfinishedRecordIsBounded(t *testing.T) {
	e := newEnv(t)
	topic := e.topic(t, "rv-window")
	const n = 4000
	e.produce(t, topic, 0, n, func(i int) string { return "k" + strconv.Itoa(i) })
	cfg := e.config(topic, "g-rv-window")
	cfg.Ordering = kafka.ByKey
	cfg.MaxInFlight = 8
	src := newSource(t, cfg)
	defer src.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	first, err := src.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hp, hoff := idOffset(first.Message().ID)
	var past atomic.Int64
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		rctx, rc := context.WithTimeout(ctx, 500*time.Millisecond)
		d, err := src.Receive(rctx)
		rc()
		if err != nil {
			break
		}
		p, off := idOffset(d.Message().ID)
		if p == hp && off > hoff {
			past.Add(1)
		}
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(300 * time.Millisecond)
	c := e.committed(t, "g-rv-window", topic)[hp]
	t.Logf("held partition %d offset %d unsettled; %d later records of that partition were handled meanwhile; committed=%d", hp, hoff, past.Load(), c)
	if past.Load() > int64(4*cfg.MaxInFlight) {
		t.Errorf("partition fetched/handled %d records past an unsettled one (MaxInFlight %d): uncommitted window and tracker unbounded", past.Load(), cfg.MaxInFlight)
	}
	_ = first.Ack(ctx)
}

// R2: a committed offset beyond the partition's end (log truncated, topic
// recreated) is never reset: the fetcher waits and records produced below
