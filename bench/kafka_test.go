package bench

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/franz"
	"github.com/queuekit/queuekit/broker/kafka"
	"github.com/queuekit/queuekit/consumer"
)

// Kafka throughput (issue 16): the franz-go adapter (broker/franz) against a
// raw franz-go consumer and against the kafka-go adapter (broker/kafka), on
// the Kafka protocol served by one in-process kfake cluster
// (github.com/twmb/franz-go/pkg/kfake: a protocol-level stand-in, not Apache
// Kafka). See BenchmarkKafkaThroughput.

const (
	kafkaPartitions  = 4
	kafkaRecordBytes = 100    // a record's value
	kafkaKeys        = 10_000 // distinct keys, "key-00000".."key-09999", record i has key i % kafkaKeys
	// kafkaMaxWait is every contender's fetch max wait.
	kafkaMaxWait = 100 * time.Millisecond
	// The group timings of every contender (the cluster accepts sessions
	// down to 100 ms): they decide how fast a member joins and leaves,
	// not how fast it consumes.
	kafkaHeartbeat        = 100 * time.Millisecond
	kafkaSessionTimeout   = 2 * time.Second
	kafkaRebalanceTimeout = 3 * time.Second
	// kafkaRunLimit bounds one contender's run.
	kafkaRunLimit = 5 * time.Minute
)

// A kafkaShape is how the consumer runtime handles the records: the
// adapters' Ordering and the runtime's workers (consumer.WithConcurrency).
// The raw loop has one shape only; it runs once per shape and round all
// the same, as the baseline of that shape's round.
type kafkaShape struct {
	name    string
	byKey   bool
	workers int
}

var kafkaShapes = []kafkaShape{
	{"by-partition-1worker", false, 1},
	{"by-partition-4workers", false, 4},
	{"by-key-16workers", true, 16},
}

// A kafkaContender consumes the whole topic in a fresh group.
type kafkaContender struct {
	name string
	run  func(tb testing.TB, k *kafkaTopic, sh kafkaShape, group string) kafkaRun
}

// The contenders, in their order in round 1 (each round starts one further
// in this list).
var kafkaContenders = []kafkaContender{
	{"raw-franz", runRawFranz},
	{"franz", runFranzAdapter},
	{"kafka-go", runKafkaGoAdapter},
}

// kafkaRun is what one run measured.
type kafkaRun struct {
	n int
	// total runs from creating the client (raw) or the Source (adapters)
	// until the n-th record was handled: it includes joining the group
	// and the first fetches, not the final commit nor leaving the group.
	total time.Duration
	// steady runs from the first record handled to the n-th.
	steady time.Duration
	// cpu is the process's CPU time (user + system) over total: the
	// client's and the in-process cluster's together.
	cpu time.Duration
	// polls is the raw loop's count of polls (and commits); 0 for the
	// adapters.
	polls int
	// mallocs and bytes are the process's heap allocations over the run,
	// from start to after leaving the group (the cluster's included).
	mallocs, bytes uint64
	// others is the CPU the machine's other processes used during the
	// run, in cores (from /proc/stat, less this process's); -1 if unknown.
	others float64
}

func (r kafkaRun) rate() float64       { return float64(r.n) / r.total.Seconds() }
func (r kafkaRun) steadyRate() float64 { return float64(r.n) / r.steady.Seconds() }
func (r kafkaRun) cpuPerRecord() float64 {
	return float64(r.cpu.Microseconds()) / float64(r.n)
}

// measure runs f and adds to its result the heap allocations made
// meanwhile and the CPU the other processes used.
func measure(f func() kafkaRun) kafkaRun {
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	busy0, self0, t0 := machineBusy(), processCPU(), time.Now()
	r := f()
	busy1, self1, elapsed := machineBusy(), processCPU(), time.Since(t0)
	runtime.ReadMemStats(&m1)
	r.mallocs, r.bytes = m1.Mallocs-m0.Mallocs, m1.TotalAlloc-m0.TotalAlloc
	r.others = -1
	if busy0 >= 0 && busy1 >= 0 {
		r.others = max(0, (busy1-busy0-(self1-self0)).Seconds()/elapsed.Seconds())
	}
	return r
}

// machineBusy returns the CPU time all processes used so far (every CPU's
// time from /proc/stat but idle and iowait), or -1 if unknown.
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return -1
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	if len(f) < 9 || f[0] != "cpu" {
		return -1
	}
	var busy int64
	for i, v := range f[1:9] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return -1
		}
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return time.Duration(busy) * clockTick()
}

// kafkaTopic is the cluster and its pre-filled topic.
type kafkaTopic struct {
	brokers []string
	topic   string
	n       int
	adm     *kadm.Client
	groups  atomic.Int64
	// filled says what the topic holds and how long filling it took.
	filled string
}

// newKafkaTopic starts a kfake cluster with one broker, closed when tb
// ends, and fills a 4-partition topic with n records of kafkaRecordBytes
// bytes (no compression, keys hashed to partitions by franz-go's default
// partitioner, as Kafka's Java client does).
func newKafkaTopic(tb testing.TB, n int) *kafkaTopic {
	tb.Helper()
	const topic = "bench-throughput"
	c, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.GroupMinSessionTimeout(100*time.Millisecond),
		kfake.SeedTopics(kafkaPartitions, topic, topic+".dlt"),
	)
	if err != nil {
		tb.Fatalf("kfake.NewCluster: %v", err)
	}
	tb.Cleanup(c.Close)
	k := &kafkaTopic{brokers: c.ListenAddrs(), topic: topic, n: n}

	admCl, err := kgo.NewClient(kgo.SeedBrokers(k.brokers...))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(admCl.Close)
	k.adm = kadm.NewClient(admCl)

	start := time.Now()
	p, err := kgo.NewClient(
		kgo.SeedBrokers(k.brokers...),
		kgo.DefaultProduceTopic(topic),
		kgo.ProducerBatchCompression(kgo.NoCompression()),
	)
	if err != nil {
		tb.Fatal(err)
	}
	defer p.Close()
	keys := make([][]byte, kafkaKeys)
	for i := range keys {
		keys[i] = fmt.Appendf(nil, "key-%05d", i)
	}
	value := make([]byte, kafkaRecordBytes)
	for i := range value {
		value[i] = 'a' + byte(i%26)
	}
	ctx, cancel := context.WithTimeout(context.Background(), kafkaRunLimit)
	defer cancel()
	var (
		wg   sync.WaitGroup
		once sync.Once
		perr error
	)
	for i := range n {
		wg.Add(1)
		p.Produce(ctx, &kgo.Record{Key: keys[i%kafkaKeys], Value: value}, func(_ *kgo.Record, err error) {
			if err != nil {
				once.Do(func() { perr = err })
			}
			wg.Done()
		})
	}
	wg.Wait()
	if perr != nil {
		tb.Fatalf("produce: %v", perr)
	}
	end := k.endOffsets(tb)
	var sum int64
	for _, o := range end {
		sum += o
	}
	if sum != int64(n) {
		tb.Fatalf("the topic holds %d records (%v); want %d", sum, end, n)
	}
	k.filled = fmt.Sprintf("Kafka protocol (in-process kfake cluster): topic %s filled with %d records of %d B (%d keys) in %v; per partition %v",
		topic, n, kafkaRecordBytes, kafkaKeys, time.Since(start).Round(time.Millisecond), end)
	return k
}

// group returns a fresh consumer group name.
func (k *kafkaTopic) group(contender string) string {
	return "bench-" + contender + "-" + strconv.FormatInt(k.groups.Add(1), 10)
}

func (k *kafkaTopic) endOffsets(tb testing.TB) map[int32]int64 {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := k.adm.ListEndOffsets(ctx, k.topic)
	if err == nil {
		err = l.Error()
	}
	if err != nil {
		tb.Fatalf("ListEndOffsets: %v", err)
	}
	out := map[int32]int64{}
	l.Each(func(o kadm.ListedOffset) { out[o.Partition] = o.Offset })
	return out
}

// checkCommitted fails tb unless group committed the end offset of every
// partition: a run that is fast but does not commit what it consumed
// cannot pass for a fast one.
func (k *kafkaTopic) checkCommitted(tb testing.TB, group string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	got, err := k.adm.FetchOffsetsForTopics(ctx, group, k.topic)
	if err == nil {
		err = got.Error()
	}
	if err != nil {
		tb.Fatalf("FetchOffsets(%s): %v", group, err)
	}
	for p, end := range k.endOffsets(tb) {
		o, ok := got.Lookup(k.topic, p)
		if !ok || o.At != end {
			tb.Fatalf("group %s, partition %d: committed %d (found %v); want the end offset %d", group, p, o.At, ok, end)
		}
	}
}

// runRawFranz is the baseline: a franz-go group consumer in a plain
// PollFetches loop, a no-op per record, and a synchronous
// CommitUncommittedOffsets (the offsets just polled) after each poll.
func runRawFranz(tb testing.TB, k *kafkaTopic, _ kafkaShape, group string) kafkaRun {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), kafkaRunLimit)
	defer cancel()
	cpu0, start := processCPU(), time.Now()
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(k.brokers...),
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(k.topic),
		kgo.DisableAutoCommit(),
		kgo.FetchMaxWait(kafkaMaxWait),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), // the adapters' default
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.Balancers(kgo.CooperativeStickyBalancer()),
		kgo.HeartbeatInterval(kafkaHeartbeat),
		kgo.SessionTimeout(kafkaSessionTimeout),
		kgo.RebalanceTimeout(kafkaRebalanceTimeout),
	)
	if err != nil {
		tb.Fatal(err)
	}
	defer cl.Close()
	var (
		handled     int
		polls       int
		first, last time.Time
		cpu1        time.Duration
	)
	for handled < k.n {
		fs := cl.PollFetches(ctx)
		polls++
		if err := ctx.Err(); err != nil {
			tb.Fatalf("raw franz-go: handled %d of %d records in %v", handled, k.n, kafkaRunLimit)
		}
		fs.EachError(func(t string, p int32, err error) {
			tb.Fatalf("raw franz-go: fetch %s/%d: %v", t, p, err)
		})
		fs.EachRecord(func(*kgo.Record) {
			if handled == 0 {
				first = time.Now()
			}
			handled++ // the no-op handling
			if handled == k.n {
				last, cpu1 = time.Now(), processCPU()
			}
		})
		if err := cl.CommitUncommittedOffsets(ctx); err != nil {
			tb.Fatalf("raw franz-go: commit: %v", err)
		}
	}
	cl.Close() // leaves the group
	if handled != k.n {
		tb.Fatalf("raw franz-go: handled %d records; want exactly %d", handled, k.n)
	}
	k.checkCommitted(tb, group)
	return kafkaRun{n: k.n, total: last.Sub(start), steady: last.Sub(first), cpu: cpu1 - cpu0, polls: polls}
}

// runFranzAdapter runs the consumer runtime on broker/franz's Source.
func runFranzAdapter(tb testing.TB, k *kafkaTopic, sh kafkaShape, group string) kafkaRun {
	tb.Helper()
	ord := franz.ByPartition
	if sh.byKey {
		ord = franz.ByKey
	}
	return runRuntime(tb, k, sh, group, "franz adapter", func() (broker.Source, error) {
		return franz.NewSource(franz.Config{
			Brokers:           k.brokers,
			GroupID:           group,
			Topic:             k.topic,
			Ordering:          ord,
			HeartbeatInterval: kafkaHeartbeat,
			SessionTimeout:    kafkaSessionTimeout,
			RebalanceTimeout:  kafkaRebalanceTimeout,
			MaxWait:           kafkaMaxWait,
			CommitInterval:    time.Second, // the default, as CommitBatch (1000) and MaxInFlight (256)
			Logger:            quiet,
		})
	})
}

// runKafkaGoAdapter runs the consumer runtime on broker/kafka's Source.
func runKafkaGoAdapter(tb testing.TB, k *kafkaTopic, sh kafkaShape, group string) kafkaRun {
	tb.Helper()
	ord := kafka.ByPartition
	if sh.byKey {
		ord = kafka.ByKey
	}
	return runRuntime(tb, k, sh, group, "kafka-go adapter", func() (broker.Source, error) {
		return kafka.NewSource(kafka.Config{
			Brokers:           k.brokers,
			GroupID:           group,
			Topic:             k.topic,
			Ordering:          ord,
			HeartbeatInterval: kafkaHeartbeat,
			SessionTimeout:    kafkaSessionTimeout,
			RebalanceTimeout:  kafkaRebalanceTimeout,
			JoinGroupBackoff:  100 * time.Millisecond,
			MaxWait:           kafkaMaxWait,
			CommitInterval:    time.Second, // the default, as CommitBatch (1000) and MaxInFlight (256)
			Logger:            quiet,
		})
	})
}

// runRuntime consumes the topic with consumer.New(source, no-op handler,
// WithConcurrency(sh.workers)) and shuts it down (final commit, leaving the
// group) once the n-th record was handled; it then checks that exactly n
// records were handled and that the end offsets were committed.
func runRuntime(tb testing.TB, k *kafkaTopic, sh kafkaShape, group, what string, newSource func() (broker.Source, error)) kafkaRun {
	tb.Helper()
	var (
		handled atomic.Int64
		first   atomic.Int64 // UnixNano of the first record handled
		last    time.Time
		cpu1    time.Duration
	)
	done := make(chan struct{})
	n := int64(k.n)
	cpu0, start := processCPU(), time.Now()
	src, err := newSource()
	if err != nil {
		tb.Fatalf("%s: NewSource: %v", what, err)
	}
	c, err := consumer.New(src, consumer.HandlerFunc(func(context.Context, *broker.Message) error {
		switch handled.Add(1) { // the no-op handling
		case 1:
			first.Store(time.Now().UnixNano())
		case n:
			close(done)
		}
		return nil
	}), consumer.WithConcurrency(sh.workers), consumer.WithLogger(quiet))
	if err != nil {
		tb.Fatalf("%s: consumer.New: %v", what, err)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- c.Run(context.Background()) }()
	select {
	case <-done:
		last, cpu1 = time.Now(), processCPU()
	case err := <-runErr:
		tb.Fatalf("%s: Run returned %v after %d of %d records", what, err, handled.Load(), n)
	case <-time.After(kafkaRunLimit):
		_ = c.Close()
		tb.Fatalf("%s: handled %d of %d records in %v", what, handled.Load(), n, kafkaRunLimit)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.Shutdown(ctx); err != nil { // final commit, leave
		tb.Fatalf("%s: Shutdown: %v", what, err)
	}
	<-runErr
	if got := handled.Load(); got != n {
		tb.Fatalf("%s: handled %d records; want exactly %d", what, got, n)
	}
	k.checkCommitted(tb, group)
	return kafkaRun{n: k.n, total: last.Sub(start), steady: last.Sub(time.Unix(0, first.Load())), cpu: cpu1 - cpu0}
}

// kafkaEnvList returns the comma-separated names in the environment
// variable env, checked against the names known, or nil when it is unset.
func kafkaEnvList(tb testing.TB, env string, known []string) []string {
	tb.Helper()
	v := os.Getenv(env)
	if v == "" {
		return nil
	}
	names := strings.Split(v, ",")
	for _, name := range names {
		if !slices.Contains(known, name) {
			tb.Fatalf("%s=%q: %q is none of %s", env, v, name, strings.Join(known, ", "))
		}
	}
	return names
}

func kafkaEnvInt(tb testing.TB, env string, def int) int {
	tb.Helper()
	v := os.Getenv(env)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		tb.Fatalf("%s=%q: want a positive number", env, v)
	}
	return n
}

// kafkaSelection returns the shapes and contenders of QUEUEKIT_BENCH_KAFKA_SHAPES
// and QUEUEKIT_BENCH_KAFKA_ONLY (default all).
func kafkaSelection(tb testing.TB) ([]kafkaShape, []kafkaContender) {
	tb.Helper()
	var shapeNames, contenderNames []string
	for _, s := range kafkaShapes {
		shapeNames = append(shapeNames, s.name)
	}
	for _, c := range kafkaContenders {
		contenderNames = append(contenderNames, c.name)
	}
	shapes, contenders := kafkaShapes, kafkaContenders
	if only := kafkaEnvList(tb, "QUEUEKIT_BENCH_KAFKA_SHAPES", shapeNames); only != nil {
		shapes = slices.DeleteFunc(slices.Clone(shapes), func(s kafkaShape) bool { return !slices.Contains(only, s.name) })
	}
	if only := kafkaEnvList(tb, "QUEUEKIT_BENCH_KAFKA_ONLY", contenderNames); only != nil {
		contenders = slices.DeleteFunc(slices.Clone(contenders), func(c kafkaContender) bool { return !slices.Contains(only, c.name) })
	}
	return shapes, contenders
}

// loadAverage returns /proc/loadavg's three load averages, or "?".
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// kafkaRounds runs rounds rounds of every shape and contender and returns
// the runs by shape and contender, one per round, and a table line per
// shape and round. In round r (from 0) the contenders run in their list
// order rotated by r, back to back, each after a runtime.GC, so that each
// round's ratios compare runs seconds apart, on the same load.
func kafkaRounds(tb testing.TB, k *kafkaTopic, rounds int, shapes []kafkaShape, contenders []kafkaContender) (map[string]map[string][]kafkaRun, map[string][]string) {
	tb.Helper()
	runs := map[string]map[string][]kafkaRun{}
	lines := map[string][]string{}
	for _, sh := range shapes {
		runs[sh.name] = map[string][]kafkaRun{}
	}
	for r := range rounds {
		load := loadAverage()
		for _, sh := range shapes {
			var line strings.Builder
			byName := map[string]kafkaRun{}
			for i := range contenders {
				c := contenders[(i+r)%len(contenders)]
				runtime.GC()
				run := measure(func() kafkaRun { return c.run(tb, k, sh, k.group(c.name)) })
				byName[c.name] = run
				runs[sh.name][c.name] = append(runs[sh.name][c.name], run)
			}
			for _, c := range contenders { // the table's columns in list order
				run := byName[c.name]
				fmt.Fprintf(&line, "  %-9s %8.0f rec/s (steady %8.0f, %5.2f µs CPU/rec, %.2f allocs/rec, %.0f B/rec",
					c.name, run.rate(), run.steadyRate(), run.cpuPerRecord(), float64(run.mallocs)/float64(run.n), float64(run.bytes)/float64(run.n))
				if run.polls > 0 {
					fmt.Fprintf(&line, ", %d polls", run.polls)
				}
				if run.others >= 0 {
					fmt.Fprintf(&line, ", others %.2f cores", run.others)
				}
				line.WriteString(")")
			}
			if f, ok := byName["franz"]; ok {
				if raw, ok := byName["raw-franz"]; ok {
					fmt.Fprintf(&line, "  franz/raw %.2f", f.rate()/raw.rate())
				}
				if kg, ok := byName["kafka-go"]; ok {
					fmt.Fprintf(&line, "  franz/kafka-go %.2f", f.rate()/kg.rate())
				}
			}
			lines[sh.name] = append(lines[sh.name], fmt.Sprintf("round %d (load %s)%s", r+1, load, line.String()))
		}
	}
	return runs, lines
}

// BenchmarkKafkaThroughput is issue 16's throughput comparison: the
// franz-go adapter (broker/franz) through the consumer runtime against a
// raw franz-go loop and against the kafka-go adapter (broker/kafka), in
// the same run, on one in-process kfake cluster (the Kafka protocol, not
// Apache Kafka):
//
//	go test -run '^$' -bench BenchmarkKafkaThroughput -benchtime 1x -timeout 60m ./bench/
//
// The cluster (one broker) is made once per benchmark run, with a
// 4-partition topic filled once with QUEUEKIT_BENCH_KAFKA_RECORDS records
// (default 1,000,000) of 100 B, 10,000 distinct keys, uncompressed. Every
// run consumes the whole topic from the start in a fresh consumer group,
// with a no-op handler:
//
//   - raw-franz: a franz-go group consumer (kgo), a PollFetches loop, a
//     synchronous CommitUncommittedOffsets after each poll;
//   - franz: consumer.New on broker/franz's Source;
//   - kafka-go: consumer.New on broker/kafka's Source.
//
// Shapes: ByPartition with 1 and 4 workers, ByKey with 16 workers
// (consumer.WithConcurrency; MaxInFlight is the adapters' default, 256 per
// partition). The raw loop has one shape, run once per shape and round as
// that shape's baseline. Both adapters run with the same settings: MaxWait
// 100 ms, CommitInterval 1 s, CommitBatch 1,000, read-committed, and the
// same group timings as the raw client (heartbeat 100 ms, session 2 s,
// rebalance 3 s).
//
// QUEUEKIT_BENCH_KAFKA_ROUNDS rounds (default 3) run inside one benchmark
// call: round r runs each shape in turn, and for each shape every
// contender once, back to back (the contenders' order rotates by one each
// round), so that every round's ratios compare runs made seconds apart.
// A run's time is from creating the client or Source until the last
// record was handled: it includes joining the group and the first
// fetches, for every contender alike, and leaves out the final commit and
// leaving the group. After each run (untimed) the benchmark checks that
// the handler saw exactly as many records as the topic holds and that the
// group committed the end offset of each partition.
//
// The rounds run first; then one sub-benchmark per shape logs a line per
// round (the load average at the round's start; per contender rec/s, the
// steady rec/s from the first record to the last, and the process's CPU
// time and heap allocations per record: client and in-process cluster
// together; the CPU the machine's other processes used meanwhile, in
// cores; the round's ratios) and reports, over the rounds:
// <contender>-rec/s (all records over all time), <contender>-cpu-ns/rec
// (the process's CPU time per record: on a shared machine steadier than
// the rates, as others' load does not count in it), franz/raw and
// franz/kafka-go (the median of the per-round ratios of rec/s), and
// min-franz/raw and min-franz/kafka-go (the worst round); its ns/op is the
// franz adapter's time per record. The bar is franz/raw ≥ 0.9 and
// franz/kafka-go ≥ 2 in every round: read the min- figures.
//
// QUEUEKIT_BENCH_KAFKA_SHAPES (e.g. by-key-16workers) and
// QUEUEKIT_BENCH_KAFKA_ONLY (e.g. franz, for a CPU profile of it alone)
// restrict the shapes and contenders, comma-separated.
// QUEUEKIT_BENCH_KAFKA_CPUPROFILE=file writes a CPU profile of the rounds
// alone (go test's -cpuprofile includes filling the topic).
func BenchmarkKafkaThroughput(b *testing.B) {
	shapes, contenders := kafkaSelection(b)
	rounds := kafkaEnvInt(b, "QUEUEKIT_BENCH_KAFKA_ROUNDS", 3)
	k := newKafkaTopic(b, kafkaEnvInt(b, "QUEUEKIT_BENCH_KAFKA_RECORDS", 1_000_000))
	if path := os.Getenv("QUEUEKIT_BENCH_KAFKA_CPUPROFILE"); path != "" {
		// The rounds only, without filling the topic (-cpuprofile
		// profiles the whole process).
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		defer pprof.StopCPUProfile()
	}
	runs, lines := kafkaRounds(b, k, rounds, shapes, contenders)
	pprof.StopCPUProfile() // before the sub-benchmarks; a no-op without a profile
	for _, sh := range shapes {
		byName := runs[sh.name]
		b.Run(sh.name, func(b *testing.B) {
			// Logged here: go test prints a benchmark's log only where it
			// prints its result line, which a parent of sub-benchmarks has not.
			b.Log(k.filled)
			for _, l := range lines[sh.name] {
				b.Log(l)
			}
			for _, c := range contenders {
				var n int
				var total, cpu time.Duration
				for _, r := range byName[c.name] {
					n, total, cpu = n+r.n, total+r.total, cpu+r.cpu
				}
				b.ReportMetric(float64(n)/total.Seconds(), c.name+"-rec/s")
				b.ReportMetric(float64(cpu.Nanoseconds())/float64(n), c.name+"-cpu-ns/rec")
				if c.name == "franz" {
					b.ReportMetric(float64(total.Nanoseconds())/float64(n), "ns/op")
				}
			}
			for _, x := range []struct{ base, unit string }{{"raw-franz", "franz/raw"}, {"kafka-go", "franz/kafka-go"}} {
				ratios := kafkaRatios(byName["franz"], byName[x.base])
				if len(ratios) == 0 {
					continue
				}
				unit := x.unit
				b.ReportMetric(median(ratios), unit)
				b.ReportMetric(slices.Min(ratios), "min-"+unit)
			}
		})
	}
}

// kafkaRatios returns the per-round ratios of a's rate to b's.
func kafkaRatios(a, b []kafkaRun) []float64 {
	var out []float64
	for i := range min(len(a), len(b)) {
		out = append(out, a[i].rate()/b[i].rate())
	}
	return out
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// TestKafkaSmoke runs one round of BenchmarkKafkaThroughput's contenders
// and shapes on 1,000 records, so that go test without -bench checks the
// harness (Kafka protocol, in-process kfake cluster). Nothing is timed.
func TestKafkaSmoke(t *testing.T) {
	shapes, contenders := kafkaSelection(t)
	k := newKafkaTopic(t, 1000)
	t.Log(k.filled)
	_, lines := kafkaRounds(t, k, 1, shapes, contenders)
	for _, sh := range shapes {
		for _, l := range lines[sh.name] {
			t.Log(sh.name, l)
		}
	}
}
