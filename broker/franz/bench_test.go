package franz_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/franz"
	"github.com/queuekit/queuekit/consumer"
)

// BenchmarkSource compares, on one in-process kfake cluster (Kafka
// protocol), the Source through the consumer runtime (no-op handler) with a
// raw kgo group consumer that polls and commits what it polled, on
// QUEUEKIT_BENCH_FRANZ_N records (default 200,000) of 100 B in 4 partitions.
// It reports rec/s of both and their ratio; ns/op is the Source's time per
// record. The official comparison (1,000,000 records, and the kafka-go
// adapter) is bench's BenchmarkKafkaThroughput.
func BenchmarkSource(b *testing.B) {
	n := 200_000
	if v, err := strconv.Atoi(os.Getenv("QUEUEKIT_BENCH_FRANZ_N")); err == nil && v > 0 {
		n = v
	}
	const topic = "bench"
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.GroupMinSessionTimeout(100*time.Millisecond),
		kfake.SeedTopics(partitions, topic, topic+".dlt"))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	brokers := c.ListenAddrs()
	p, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic),
		kgo.ProducerBatchCompression(kgo.NoCompression()))
	if err != nil {
		b.Fatal(err)
	}
	value := make([]byte, 100)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		p.Produce(context.Background(), &kgo.Record{Key: fmt.Appendf(nil, "key-%05d", i%10000), Value: value},
			func(_ *kgo.Record, err error) {
				if err != nil {
					b.Error(err)
				}
				wg.Done()
			})
	}
	wg.Wait()
	p.Close()
	shapes := []struct {
		name    string
		ord     franz.Ordering
		workers int
	}{{"by-partition-1", franz.ByPartition, 1}, {"by-partition-4", franz.ByPartition, 4}, {"by-key-16", franz.ByKey, 16}}
	var groups atomic.Int64
	group := func() string { return "g" + strconv.FormatInt(groups.Add(1), 10) }
	b.Run("direct-receive-ack", func(b *testing.B) {
		var raw, src time.Duration
		for range b.N {
			raw += rawLoop(b, brokers, topic, group(), n)
			src += directLoop(b, brokers, topic, group(), n)
		}
		b.ReportMetric(float64(n*b.N)/raw.Seconds(), "raw-rec/s")
		b.ReportMetric(float64(n*b.N)/src.Seconds(), "franz-rec/s")
		b.ReportMetric(raw.Seconds()/src.Seconds(), "franz/raw")
	})
	for _, sh := range shapes {
		b.Run(sh.name, func(b *testing.B) {
			var raw, src, rawCPU, srcCPU time.Duration
			for range b.N {
				c0 := processCPU()
				if os.Getenv("QUEUEKIT_BENCH_FRANZ_ONLY") == "" {
					raw += rawLoop(b, brokers, topic, group(), n)
				}
				c1 := processCPU()
				src += runtimeLoop(b, brokers, topic, group(), n, sh.ord, sh.workers)
				c2 := processCPU()
				rawCPU += c1 - c0
				srcCPU += c2 - c1
			}
			b.ReportMetric(float64(rawCPU.Nanoseconds())/float64(n*b.N), "raw-cpu-ns/rec")
			b.ReportMetric(float64(srcCPU.Nanoseconds())/float64(n*b.N), "franz-cpu-ns/rec")
			b.ReportMetric(float64(n*b.N)/raw.Seconds(), "raw-rec/s")
			b.ReportMetric(float64(n*b.N)/src.Seconds(), "franz-rec/s")
			b.ReportMetric(raw.Seconds()/src.Seconds(), "franz/raw")
			b.ReportMetric(float64(src.Nanoseconds())/float64(n*b.N), "ns/rec")
		})
	}
}

func rawLoop(b *testing.B, brokers []string, topic, group string, n int) time.Duration {
	start := time.Now()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumerGroup(group), kgo.ConsumeTopics(topic),
		kgo.DisableAutoCommit(), kgo.FetchMaxWait(100*time.Millisecond), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.Balancers(kgo.CooperativeStickyBalancer()),
		kgo.HeartbeatInterval(100*time.Millisecond), kgo.SessionTimeout(2*time.Second), kgo.RebalanceTimeout(3*time.Second))
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	ctx := context.Background()
	handled := 0
	for handled < n {
		fs := cl.PollFetches(ctx)
		fs.EachRecord(func(*kgo.Record) { handled++ })
		if err := cl.CommitUncommittedOffsets(ctx); err != nil {
			b.Fatal(err)
		}
	}
	return time.Since(start)
}

func runtimeLoop(b *testing.B, brokers []string, topic, group string, n int, ord franz.Ordering, workers int) time.Duration {
	start := time.Now()
	src, err := franz.NewSource(franz.Config{Brokers: brokers, Topic: topic, GroupID: group, Ordering: ord,
		HeartbeatInterval: 100 * time.Millisecond, SessionTimeout: 2 * time.Second, RebalanceTimeout: 3 * time.Second,
		MaxWait: 100 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	var handled atomic.Int64
	done := make(chan struct{})
	c, err := consumer.New(src, consumer.HandlerFunc(func(context.Context, *broker.Message) error {
		if handled.Add(1) == int64(n) {
			close(done)
		}
		return nil
	}), consumer.WithConcurrency(workers), consumer.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		b.Fatal(err)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- c.Run(context.Background()) }()
	<-done
	d := time.Since(start)
	if err := c.Shutdown(context.Background()); err != nil {
		b.Fatal(err)
	}
	<-runErr
	return d
}

// directLoop receives and acks n records on one goroutine, without the
// consumer runtime.
func directLoop(b *testing.B, brokers []string, topic, group string, n int) time.Duration {
	start := time.Now()
	src, err := franz.NewSource(franz.Config{Brokers: brokers, Topic: topic, GroupID: group,
		HeartbeatInterval: 100 * time.Millisecond, SessionTimeout: 2 * time.Second, RebalanceTimeout: 3 * time.Second,
		MaxWait: 100 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for range n {
		d, err := src.Receive(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := d.Ack(ctx); err != nil {
			b.Fatal(err)
		}
	}
	d := time.Since(start)
	if err := src.Close(ctx); err != nil {
		b.Fatal(err)
	}
	return d
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
