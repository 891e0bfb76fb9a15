// Command kafka-group shows a Kafka consumer group that handles events of
// different keys concurrently and the events of each key strictly in order
// (ByKey ordering), on either Kafka adapter: broker/kafka (kafka-go, the
// default) or broker/franz (franz-go) with -client franz.
//
// It creates a topic with 4 partitions, publishes a run of events for each of
// a dozen accounts (the key), and consumes them with two members of one
// consumer group, under one Supervisor, each member with 8 workers. It checks
// and prints that every account's events were handled one at a time and in
// the order they were published, while events of different accounts ran at
// the same time; then it shuts down gracefully (each member commits what it
// handled and leaves the group) and shows that the group's committed offsets
// cover every event.
//
// On the way it shows an operator's work on dead letters: the ledger refuses
// the events of one account, which is not open there yet, so they are
// dead-lettered with the reason. The program lists them with
// the adapter's NewDeadLetters (why each failed), opens the account (the fix),
// redrives them to the topic (same key, same partition, so the account's
// order holds) and waits until the group has handled them.
//
//	go run ./examples/kafka-group
//	go run ./examples/kafka-group -brokers kafka-1:9092,kafka-2:9092
//	go run ./examples/kafka-group -client franz   # the franz-go adapter
//
// The brokers come from -brokers, else QUEUEKIT_KAFKA_BROKERS. With neither,
// the example starts an embedded in-process cluster (github.com/twmb/franz-go's
// kfake) so that it runs as is: kfake speaks the Kafka protocol, but it is a
// stand-in for trying things out, not Apache Kafka.
//
// Ctrl-C stops it gracefully at any point: in-flight events finish and the
// handled ones are committed; the summary says what was left. The topics are
// the run's own (a fresh name each run) and are deleted at the end either way.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/retry"
)

const (
	partitions  = 4
	members     = 2 // group members, in this one process
	concurrency = 8 // workers per member
)

// config is what run needs from main.
type config struct {
	// Brokers to use; empty starts an embedded kfake cluster.
	Brokers []string
	// Client is the Kafka adapter: "kafka-go" (default) or "franz".
	Client string
	// Accounts and EventsPerAccount size the run.
	Accounts, EventsPerAccount int
	// Timeout bounds the run: joining the group, and handling every event.
	Timeout time.Duration
	// Logger receives the runtime's and the adapter's logs.
	Logger *slog.Logger
}

func main() {
	cfg := config{Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	brokers := flag.String("brokers", os.Getenv("QUEUEKIT_KAFKA_BROKERS"), "comma-separated Kafka brokers, host:port (default from QUEUEKIT_KAFKA_BROKERS; none: an embedded kfake cluster)")
	flag.StringVar(&cfg.Client, "client", "kafka-go", "the Kafka adapter: kafka-go (broker/kafka) or franz (broker/franz, on franz-go)")
	flag.IntVar(&cfg.Accounts, "accounts", 12, "number of accounts (keys)")
	flag.IntVar(&cfg.EventsPerAccount, "events", 20, "events per account")
	flag.DurationVar(&cfg.Timeout, "timeout", time.Minute, "give up if the events are not handled within this")
	flag.Parse()
	for _, b := range strings.Split(*brokers, ",") {
		if b = strings.TrimSpace(b); b != "" {
			cfg.Brokers = append(cfg.Brokers, b)
		}
	}

	// The library installs no signal handlers: the program owns them.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if _, err := run(ctx, cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kafka-group:", err)
		os.Exit(1)
	}
}

// Event is the payload: a change to an account's balance. Seq numbers an
// account's events from 1, in the order they were published.
type Event struct {
	Account string `json:"account"`
	Seq     int    `json:"seq"`
	Amount  int    `json:"amount_cents"`
}

// report is what run observed.
type report struct {
	Topic     string
	Published int
	Handled   int // distinct events handled
	// Redelivered counts events handled more than once (at-least-once: after
	// a rebalance whose drain timed out, for example). 0 in a quiet run.
	Redelivered int
	// PerAccount is the sequence of Seq values handled per account, in the
	// order their handlers started.
	PerAccount map[string][]int
	// OrderErrors lists every event handled out of order, or while another
	// event of its account was running. Empty when ByKey does its job.
	OrderErrors []string
	// MaxConcurrent is the most events that ran at once in the process;
	// MaxConcurrentPerMember the most per member.
	MaxConcurrent          int
	MaxConcurrentPerMember map[string]int
	// HandledPerMember and PartitionsPerMember say how the group shared
	// the work.
	HandledPerMember    map[string]int
	PartitionsPerMember map[string][]int
	// Lag is the group's lag per partition after the shutdown: 0 everywhere
	// when every handled event was committed.
	Lag         map[int]int64
	Interrupted bool

	// Dead letters. Unopened is the account the ledger refuses until the
	// fix; DeadLettered counts the events the runtime dead-lettered
	// (distinct), DeadLetters are what List showed of them afterwards, with
	// their reasons. WouldRedrive is what a dry run selected, Redriven what
	// Redrive sent back, DeadLettersLeft what Count said after the redriven
	// events were handled.
	Unopened        string
	DeadLettered    int
	DeadLetters     []broker.DeadLetter
	WouldRedrive    int
	Redriven        int
	DeadLettersLeft int
}

// run is the whole program: main gives it a context cancelled on Ctrl-C.
func run(ctx context.Context, cfg config, stdout io.Writer) (*report, error) {
	if cfg.Accounts <= 0 || cfg.EventsPerAccount <= 0 {
		return nil, fmt.Errorf("accounts (%d) and events per account (%d) must be positive", cfg.Accounts, cfg.EventsPerAccount)
	}
	if cfg.Accounts > 10_000 || cfg.EventsPerAccount > 10_000 || cfg.Accounts*cfg.EventsPerAccount > 100_000 {
		return nil, fmt.Errorf("%d accounts × %d events is more than this example publishes in one go (100,000)", cfg.Accounts, cfg.EventsPerAccount)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cl, err := clientNamed(cfg.Client)
	if err != nil {
		return nil, err
	}
	out := &printer{w: stdout}
	timeout := time.NewTimer(cfg.Timeout)
	defer timeout.Stop()

	brokers := cfg.Brokers
	if len(brokers) == 0 {
		cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
		if err != nil {
			return nil, fmt.Errorf("start the embedded kfake cluster: %w", err)
		}
		defer cluster.Close()
		brokers = cluster.ListenAddrs()
		out.printf("no -brokers or QUEUEKIT_KAFKA_BROKERS: started an embedded kfake cluster at %s\n", strings.Join(brokers, ","))
		out.printf("(kfake speaks the Kafka protocol in process; it is a stand-in for trying this out, not Apache Kafka)\n")
	} else {
		out.printf("brokers %s\n", strings.Join(brokers, ","))
	}
	out.printf("Kafka adapter: %s (broker/%s)\n", cl.name, cl.pkg)

	// A fresh topic and group for each run, so that runs do not see each
	// other's events; the topics are deleted at the end.
	topic := fmt.Sprintf("queuekit-example-accounts-%08x", rand.Uint32())
	group := topic + ".group"
	admin := &kafkago.Client{Addr: kafkago.TCP(brokers...), Timeout: 10 * time.Second, Transport: &kafkago.Transport{}}
	defer admin.Transport.(*kafkago.Transport).CloseIdleConnections()
	actx, cancel := context.WithTimeout(ctx, 15*time.Second)
	err = createTopics(actx, admin, topic, topic+".dlt")
	cancel()
	if err != nil {
		return nil, err
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		// The done topic of the dead letters' redrive progress exists only
		// if a redrive needed it (see broker/kafka's "Dead letters").
		if err := deleteTopics(dctx, admin, topic, topic+".dlt", topic+".dlt"+cl.doneSuffix); err != nil {
			out.printf("could not delete the topics: %v\n", err)
			return
		}
		if len(cfg.Brokers) > 0 {
			out.printf("deleted the topics %s and %s.dlt\n", topic, topic)
		}
	}()
	out.printf("topic %s (%d partitions, dead letters to %s.dlt), group %s\n", topic, partitions, topic, group)

	rep := &report{
		Topic:                  topic,
		PerAccount:             map[string][]int{},
		MaxConcurrentPerMember: map[string]int{},
		HandledPerMember:       map[string]int{},
		PartitionsPerMember:    map[string][]int{},
	}
	total := cfg.Accounts * cfg.EventsPerAccount
	tr := newTracker(rep)

	// The ledger does not know the last account yet: its events fail, and
	// retrying cannot help until an operator opens the account.
	rep.Unopened = fmt.Sprintf("acct-%02d", cfg.Accounts)
	books := newLedger(rep.Unopened)

	// The handler pretends to apply each event to its account, which must
	// happen in order: seq 7 of an account only after seq 6. ByKey hands the
	// events of one key out one at a time, in offset order; different keys,
	// even in the same partition, run at the same time.
	handler := consumer.JSON(func(ctx context.Context, m *broker.Message, e Event) error {
		if err := books.check(e.Account); err != nil {
			// Permanent: the runtime dead-letters the event at once, with
			// the error text, and the key's next event goes on.
			return retry.Permanent(err)
		}
		member, _ := consumer.NameFromContext(ctx)
		done := tr.start(member, m, e)
		select { // the work: 2–6 ms
		case <-time.After(time.Duration(2000+rand.IntN(4000)) * time.Microsecond):
			done(nil)
			return nil
		case <-ctx.Done():
			err := context.Cause(ctx)
			done(err) // not handled: it will be delivered again
			return err
		}
	})
	h := consumer.Chain(
		middleware.Log(cfg.Logger),
		middleware.Recover(),
		middleware.Timeout(5*time.Second),
	)(handler)

	sup := &consumer.Supervisor{Logger: cfg.Logger}
	joined := newGroupWatch(members)
	sup.OnEvent = joined.observe
	for i := 1; i <= members; i++ {
		name := "member-" + strconv.Itoa(i)
		src, err := cl.newMember(brokers, group, topic, cfg.Logger)
		if err != nil {
			return nil, err
		}
		c, err := consumer.New(src, h,
			consumer.WithConcurrency(concurrency),
			consumer.WithDrainTimeout(5*time.Second),
			consumer.WithLogger(cfg.Logger),
			consumer.WithObserver(func(_ context.Context, m *broker.Message, s consumer.Settlement, err error) {
				if err == nil && s == consumer.SettledDeadLetter { // written to the dead-letter topic
					tr.deadLetter(m.ID)
				}
			}),
		)
		if err != nil {
			return nil, err
		}
		if err := sup.Add(name, c); err != nil { // names the member: logs, events, health
			return nil, err
		}
	}

	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	var supErr error
	supDone := make(chan struct{}) // closed when sup.Run returned; supErr is set before
	go func() {
		defer close(supDone)
		supErr = sup.Run(runCtx)
	}()
	// stopSupervisor stops both members gracefully and waits: each drains
	// its in-flight events, commits, and leaves the group.
	stopSupervisor := func() error {
		stopRun()
		<-supDone
		return supErr
	}
	defer stopSupervisor() //nolint:errcheck // the paths that care report it themselves

	// Publish once both members are in the group, so that the run shows
	// them sharing the partitions. (Publishing first works as well: the
	// first member to join would start alone, and hand half its partitions
	// over, drained and committed, when the second joins.)
	start := time.Now()
	select {
	case <-joined.ready:
		out.printf("%d members joined the group in %v\n", members, time.Since(start).Round(time.Millisecond))
	case <-ctx.Done():
		rep.Interrupted = true
		return rep, stopSupervisor()
	case <-supDone:
		return nil, fmt.Errorf("the group stopped before both members joined: %w", supErr)
	case <-timeout.C:
		_ = stopSupervisor()
		return nil, fmt.Errorf("the members did not join the group within %v: %v", cfg.Timeout, joined.lastErr())
	}

	pub, err := cl.newPublisher(brokers)
	if err != nil {
		return nil, err
	}
	defer pub.Close(context.Background())
	// One Publish call, with the events of each account in seq order: the
	// key picks the partition, and within a partition Kafka keeps the order
	// in which they were written.
	var msgs []*broker.Message
	for seq := 1; seq <= cfg.EventsPerAccount; seq++ {
		for a := 1; a <= cfg.Accounts; a++ {
			e := Event{Account: fmt.Sprintf("acct-%02d", a), Seq: seq, Amount: 100 * seq}
			m, err := broker.NewJSON(e) // JSON with its content type, for consumer.JSON
			if err != nil {
				return nil, err
			}
			m.Key = []byte(e.Account)
			msgs = append(msgs, m)
		}
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = pub.Publish(pctx, topic, msgs...)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			rep.Interrupted = true
			return rep, stopSupervisor()
		}
		return nil, fmt.Errorf("publish: %w", err)
	}
	rep.Published = len(msgs)
	out.printf("published %d events: %d accounts × %d, keyed by account\n", len(msgs), cfg.Accounts, cfg.EventsPerAccount)

	// First every event settles: handled, or dead-lettered (those of the
	// account the ledger refuses).
	refused := cfg.EventsPerAccount
	start = time.Now()
	select {
	case <-tr.waitFor(total-refused, refused):
		out.printf("%d events handled and %d dead-lettered in %v\n", total-refused, refused, time.Since(start).Round(time.Millisecond))
	case <-ctx.Done():
		rep.Interrupted = true
		h, d := tr.counts()
		out.printf("interrupted: %d of %d events handled, %d dead-lettered; shutting down\n", h, total, d)
	case <-supDone:
		return nil, fmt.Errorf("the group stopped: %w", supErr)
	case <-timeout.C:
		_ = stopSupervisor()
		h, d := tr.counts()
		return nil, fmt.Errorf("only %d of %d events handled and %d of %d dead-lettered within %v", h, total-refused, d, refused, cfg.Timeout)
	}

	// The operator's part: see why they failed, fix, redrive.
	if !rep.Interrupted {
		op := operator{cl: cl, brokers: brokers, topic: topic, books: books, tr: tr, rep: rep, out: out, logger: cfg.Logger, timeout: timeout.C, stopped: supDone}
		if err := op.run(ctx, total); err != nil {
			if ctx.Err() == nil {
				_ = stopSupervisor()
				return nil, err
			}
			rep.Interrupted = true
			out.printf("interrupted: %v; shutting down\n", err)
		}
	}
	start = time.Now()
	if err := stopSupervisor(); err != nil {
		return nil, err
	}
	out.printf("both members drained, committed and left the group in %v\n", time.Since(start).Round(time.Millisecond))

	// What the group committed, read back from the brokers: lag 0 on every
	// partition means every handled event is committed, and none will be
	// handled again by the next member to join.
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	rep.Lag, err = groupLag(lctx, cl, brokers, group, topic)
	if err != nil {
		return nil, err
	}
	tr.finish()
	rep.print(out, cfg.Accounts)
	return rep, nil
}

// tracker checks, as handlers start and finish, that each account's events
// run one at a time and in seq order, and measures the concurrency.
type tracker struct {
	mu         sync.Mutex // guards everything below, and rep
	rep        *report
	total      int
	running    map[string]bool         // account → one of its events is running
	lastSeq    map[string]int          // account → highest seq handled
	seen       map[string]bool         // message ID → handled before
	inFlight   int                     // events running in the process
	perMember  map[string]int          // member → events running
	partitions map[string]map[int]bool // member → partitions it handled events of
	dead       map[string]bool         // message ID → dead-lettered
	waiters    []waiter                // see waitFor
}

// A waiter's ch is closed once handled events were handled and dead
// dead-lettered.
type waiter struct {
	handled, dead int
	ch            chan struct{}
}

func newTracker(rep *report) *tracker {
	return &tracker{
		rep:     rep,
		running: map[string]bool{}, seen: map[string]bool{},
		perMember: map[string]int{}, partitions: map[string]map[int]bool{},
		lastSeq: map[string]int{}, dead: map[string]bool{},
	}
}

// waitFor returns a channel closed once at least handled distinct events
// were handled and dead distinct events dead-lettered.
func (t *tracker) waitFor(handled, dead int) <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.waiters = append(t.waiters, waiter{handled: handled, dead: dead, ch: make(chan struct{})})
	ch := t.waiters[len(t.waiters)-1].ch
	t.notify()
	return ch
}

// notify closes the channels of the waiters that are satisfied. t.mu is held.
func (t *tracker) notify() {
	keep := t.waiters[:0]
	for _, w := range t.waiters {
		if t.rep.Handled >= w.handled && t.rep.DeadLettered >= w.dead {
			close(w.ch)
			continue
		}
		keep = append(keep, w)
	}
	t.waiters = keep
}

// deadLetter records that the event of message id was dead-lettered.
func (t *tracker) deadLetter(id string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.dead[id] {
		t.dead[id] = true
		t.rep.DeadLettered++
		t.notify()
	}
}

// start records that member started event e (message m) and returns the
// function to call when it finished.
func (t *tracker) start(member string, m *broker.Message, e Event) (done func(err error)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	r := t.rep
	if t.running[e.Account] {
		r.OrderErrors = append(r.OrderErrors, fmt.Sprintf("%s seq %d started while another event of the account was running", e.Account, e.Seq))
	}
	// In order: the next seq, or (at-least-once) one handled before.
	if last := t.lastSeq[e.Account]; e.Seq > last+1 {
		r.OrderErrors = append(r.OrderErrors, fmt.Sprintf("%s seq %d handled after seq %d", e.Account, e.Seq, last))
	}
	t.lastSeq[e.Account] = max(t.lastSeq[e.Account], e.Seq)
	r.PerAccount[e.Account] = append(r.PerAccount[e.Account], e.Seq)
	t.running[e.Account] = true
	t.inFlight++
	t.perMember[member]++
	r.MaxConcurrent = max(r.MaxConcurrent, t.inFlight)
	r.MaxConcurrentPerMember[member] = max(r.MaxConcurrentPerMember[member], t.perMember[member])
	if p, ok := partitionOf(m.ID); ok {
		if t.partitions[member] == nil {
			t.partitions[member] = map[int]bool{}
		}
		t.partitions[member][p] = true
	}
	return func(err error) {
		t.mu.Lock()
		defer t.mu.Unlock()
		t.running[e.Account] = false
		t.inFlight--
		t.perMember[member]--
		if err != nil {
			return // stopped before its work was done: not handled
		}
		r.HandledPerMember[member]++
		if t.seen[m.ID] {
			r.Redelivered++
		} else {
			t.seen[m.ID] = true
			r.Handled++
		}
		t.notify()
	}
}

// finish completes the report, once the handlers have returned.
func (t *tracker) finish() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for member, ps := range t.partitions {
		t.rep.PartitionsPerMember[member] = slices.Sorted(maps.Keys(ps))
	}
}

// counts returns the distinct events handled and dead-lettered so far.
func (t *tracker) counts() (handled, dead int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.rep.Handled, t.rep.DeadLettered
}

// partitionOf reads the partition from a Kafka message ID,
// "topic/partition/offset".
func partitionOf(id string) (int, bool) {
	parts := strings.Split(id, "/")
	if len(parts) < 3 {
		return 0, false
	}
	p, err := strconv.Atoi(parts[len(parts)-2])
	return p, err == nil
}

// groupWatch tells when every member has joined the same generation of the
// group: each member's latest group event is EventConnected (a generation
// started for it), not EventRebalanced (its generation ended).
type groupWatch struct {
	mu        sync.Mutex
	want      int
	last      map[string]consumer.EventKind
	connected map[string]bool // the runners that connected at least once
	err       error
	ready     chan struct{}
	readied   bool
}

func newGroupWatch(members int) *groupWatch {
	return &groupWatch{want: members, last: map[string]consumer.EventKind{}, connected: map[string]bool{}, ready: make(chan struct{})}
}

// observe is the Supervisor's OnEvent hook: it is called from one goroutine,
// in order.
func (w *groupWatch) observe(e consumer.Event) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch e.Kind {
	case consumer.EventConnected, consumer.EventRebalanced, consumer.EventReconnecting:
		w.last[e.Runner] = e.Kind
		if e.Kind == consumer.EventConnected {
			w.connected[e.Runner] = true
		}
		if e.Err != nil {
			w.err = e.Err
		}
	default:
		return
	}
	// A member has joined once it connected and is not reconnecting: a
	// rebalance keeps it in the group. (kafka-go's members end their
	// generation at a rebalance and connect again; with franz-go's
	// cooperative rebalancing a member keeps the partitions that do not
	// move, and a member that only gives some up, or only gains some, is
	// not connected again.)
	n := 0
	for r, k := range w.last {
		if w.connected[r] && k != consumer.EventReconnecting {
			n++
		}
	}
	if n == w.want && !w.readied {
		w.readied = true
		close(w.ready)
	}
}

func (w *groupWatch) lastErr() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err == nil {
		return errors.New("no error reported")
	}
	return w.err
}

// groupLag reads the group's lag per partition from the brokers, through a
// Source that never joins the group (Backlog needs no membership).
func groupLag(ctx context.Context, cl client, brokers []string, group, topic string) (map[int]int64, error) {
	src, err := cl.newLagReader(brokers, group, topic)
	if err != nil {
		return nil, err
	}
	defer src.Close(context.Background())
	b, err := src.Backlog(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the group's lag: %w", err)
	}
	return b.Partitions, nil
}

// createTopics creates the topics with the example's partition count; a
// topic that exists already is used as it is.
func createTopics(ctx context.Context, admin *kafkago.Client, topics ...string) error {
	req := &kafkago.CreateTopicsRequest{}
	for i, t := range topics {
		n := partitions
		if i > 0 {
			n = 1 // the dead-letter topic
		}
		// ReplicationFactor -1: the cluster's default.replication.factor.
		req.Topics = append(req.Topics, kafkago.TopicConfig{Topic: t, NumPartitions: n, ReplicationFactor: -1})
	}
	resp, err := admin.CreateTopics(ctx, req)
	if err != nil {
		return fmt.Errorf("create topics %v: %w", topics, err)
	}
	for t, err := range resp.Errors {
		if err != nil && !errors.Is(err, kafkago.TopicAlreadyExists) {
			return fmt.Errorf("create topic %s: %w", t, err)
		}
	}
	return nil
}

// deleteTopics deletes the topics; one that does not exist is not an error.
func deleteTopics(ctx context.Context, admin *kafkago.Client, topics ...string) error {
	resp, err := admin.DeleteTopics(ctx, &kafkago.DeleteTopicsRequest{Topics: topics})
	if err != nil {
		return err
	}
	for t, err := range resp.Errors {
		if err != nil && !errors.Is(err, kafkago.UnknownTopicOrPartition) {
			return fmt.Errorf("delete topic %s: %w", t, err)
		}
	}
	return nil
}

func (r *report) print(out *printer, accounts int) {
	out.printf("summary:\n")
	out.printf("  handled:     %d of %d events (%d handled twice)\n", r.Handled, r.Published, r.Redelivered)
	out.printf("  redriven:    %d of %d dead-lettered events (%s), after the fix; %d dead letters left\n",
		r.Redriven, r.DeadLettered, firstReason(r.DeadLetters), r.DeadLettersLeft)
	inOrder := 0
	for _, seqs := range r.PerAccount {
		if slices.IsSorted(seqs) {
			inOrder++
		}
	}
	out.printf("  order:       %d of %d accounts had their events handled in publish order, one at a time; %d order errors\n",
		inOrder, accounts, len(r.OrderErrors))
	for _, e := range r.OrderErrors[:min(len(r.OrderErrors), 10)] {
		out.printf("    %s\n", e)
	}
	out.printf("  concurrency: up to %d events at once in the process (different accounts)\n", r.MaxConcurrent)
	names := slices.Sorted(maps.Keys(r.HandledPerMember))
	for _, m := range names {
		ps := r.PartitionsPerMember[m]
		out.printf("    %s: handled %d events of partitions %v, up to %d at once with %d workers (ByPartition: at most %d, one per partition)\n",
			m, r.HandledPerMember[m], ps, r.MaxConcurrentPerMember[m], concurrency, len(ps))
	}
	ps := slices.Sorted(maps.Keys(r.Lag))
	var lags []string
	var sum int64
	for _, p := range ps {
		lags = append(lags, fmt.Sprintf("p%d=%d", p, r.Lag[p]))
		sum += r.Lag[p]
	}
	out.printf("  committed:   group lag after shutdown %s (total %d)\n", strings.Join(lags, " "), sum)
	// The topic holds the published events and the redriven copies; the
	// dead-lettered events were settled too.
	if committed, settled := int64(r.Published+r.Redriven)-sum, int64(r.Handled+r.DeadLettered); settled > committed {
		// ByKey lets an account's events overtake another account's in
		// the same partition, but a partition's committed offset can only
		// cover the finished prefix (at-least-once).
		out.printf("  %d settled events are not committed: they come after an unfinished event of their partition, so a next member of the group would handle them again\n",
			settled-committed)
	}
}

// firstReason is the reason of the first dead letter, for the summary.
func firstReason(dls []broker.DeadLetter) string {
	if len(dls) == 0 {
		return "none listed"
	}
	return dls[0].Reason.Err
}

// printer serialises writes from the workers and main.
type printer struct {
	mu sync.Mutex
	w  io.Writer
}

func (p *printer) printf(format string, a ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format, a...)
}
