package rabbitmq

import (
	"context"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// TestDeadLettersList10k is the "browse cost" must-show of issue 11: 10,000
// dead letters listed in one page of MaxListLimit and in pages of 1,000
// leave the dead-letter queue with the same count and order. The time it
// takes is BenchmarkDeadLettersList10k's.
//
// It runs in parallel with the other parallel tests (never with the serial
// ones that cut the vhost's connections): its queues and connections are
// its own, and it mostly waits for 10,000-message round trips.
func TestDeadLettersList10k(t *testing.T) {
	if testing.Short() {
		t.Skip("10,000 dead letters")
	}
	t.Parallel()
	q, _, dl := dlFixture(t, Classic)
	const n = 10000
	fillDeadLetters(t, q, n)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	before := peekIDsByConsume(t, q+".dlq")
	if len(before) != n {
		t.Fatalf("dead letters = %d; want %d", len(before), n)
	}
	page, err := dl.List(ctx, broker.DeadLetterQuery{Limit: broker.MaxListLimit})
	if err != nil || page.Next != "" || !slices.Equal(ids(page.Items), before) {
		t.Fatalf("List(limit %d) = %d items, next %q, %v; want the %d in order", broker.MaxListLimit, len(page.Items), page.Next, err, n)
	}
	var paged []string
	for cursor := ""; ; {
		page, err := dl.List(ctx, broker.DeadLetterQuery{Limit: 1000, Cursor: cursor})
		if err != nil {
			t.Fatal(err)
		}
		paged = append(paged, ids(page.Items)...)
		if page.Next == "" {
			break
		}
		cursor = page.Next
	}
	if !slices.Equal(paged, before) {
		t.Fatalf("paged listing = %d items, in order %v; want the %d in order", len(paged), slices.Equal(paged, before), n)
	}
	if c, err := dl.Count(ctx, broker.DeadLetterFilter{}); err != nil || c != n {
		t.Fatalf("Count = %d, %v; want %d", c, err, n)
	}
	if after := peekIDsByConsume(t, q+".dlq"); !slices.Equal(after, before) {
		t.Fatalf("after the listings: %d dead letters, same order %v; want %d in the same order", len(after), slices.Equal(after, before), n)
	}
}

// peekIDsByConsume is peekIDs for a classic queue, in one basic.consume
// instead of a basic.get per message (10,000 round trips, each ~1 ms of the
// broker's time under -race and load): it takes the queue's messages without
// acking them and closes the channel, which puts them back at once in their
// order.
func peekIDsByConsume(t testing.TB, q string) []string {
	t.Helper()
	ch, err := rawConn(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	info, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
	if err != nil {
		t.Fatalf("inspect %s: %v", q, err)
	}
	ds, err := ch.Consume(q, "", false, false, false, false, nil)
	if err != nil {
		t.Fatalf("consume %s: %v", q, err)
	}
	out := make([]string, 0, info.Messages)
	timeout := time.After(time.Minute)
	for len(out) < info.Messages {
		select {
		case d, ok := <-ds:
			if !ok {
				t.Fatalf("consume %s: channel closed after %d of %d", q, len(out), info.Messages)
			}
			out = append(out, deadLetterID(&d))
		case <-timeout:
			t.Fatalf("consume %s: %d of %d messages within a minute", q, len(out), info.Messages)
		}
	}
	_ = ch.Close() // requeues at once, in order (classic queue)
	waitFor(t, time.Minute, "the messages back in "+q, func() bool {
		n, err := readyCount(q)
		return err == nil && n >= len(out)
	})
	return out
}

// BenchmarkDeadLettersList10k times a full listing of 10,000 dead letters
// (one List of MaxListLimit), reporting msgs/s, on a classic dead-letter
// queue (given back in place) and a quorum one (rotated, see scan).
func BenchmarkDeadLettersList10k(b *testing.B) {
	for _, typ := range []string{Classic, Quorum} {
		b.Run(typ, func(b *testing.B) { benchList10k(b, typ) })
	}
}

func benchList10k(b *testing.B, typ string) {
	needBroker(b)
	q := uniqueQueue(b)
	topo := Topology{QueueType: typ}
	if err := topo.resolve(q); err != nil {
		b.Fatal(err)
	}
	ch, err := rawConn(b).Channel()
	if err != nil {
		b.Fatal(err)
	}
	if err := topo.declare(ch, q); err != nil {
		b.Fatal(err)
	}
	_ = ch.Close()
	const n = 10000
	fillDeadLetters(b, q, n)
	dl, err := NewDeadLetters(DeadLetterConfig{Dialer: Dialer{URL: amqpURL()}, Queue: q, QueueType: typ, Logger: quietLogger()})
	if err != nil {
		b.Fatal(err)
	}
	defer dl.Close(context.Background())
	ctx := context.Background()
	cpu0 := beamCPU()
	b.ResetTimer()
	for range b.N {
		page, err := dl.List(ctx, broker.DeadLetterQuery{Limit: broker.MaxListLimit})
		if err != nil || len(page.Items) != n {
			b.Fatalf("List = %d items, %v", len(page.Items), err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "msgs/s")
	if cpu0 >= 0 {
		if cpu1 := beamCPU(); cpu1 >= 0 {
			b.ReportMetric((cpu1-cpu0)/float64(b.N), "beam-cpu-s/op")
		}
	}
}

// beamCPU returns the CPU seconds (user+system) of the broker's beam.smp
// whose pid QUEUEKIT_BEAM_PID names, or -1.
func beamCPU() float64 {
	pid := os.Getenv("QUEUEKIT_BEAM_PID")
	if pid == "" {
		return -1
	}
	raw, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return -1
	}
	s := string(raw)
	i := strings.LastIndexByte(s, ')') // the command may hold spaces
	if i < 0 {
		return -1
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return -1
	}
	ut, err1 := strconv.ParseFloat(f[11], 64) // field 14, utime
	st, err2 := strconv.ParseFloat(f[12], 64) // field 15, stime
	if err1 != nil || err2 != nil {
		return -1
	}
	return (ut + st) / 100 // clock ticks: USER_HZ is 100 on Linux
}
