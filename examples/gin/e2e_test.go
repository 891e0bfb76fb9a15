package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/twmb/franz-go/pkg/kfake"
)

// The end-to-end tests build the service, run it as a process, post orders
// from concurrent clients and send SIGTERM in the middle of processing.

const (
	// e2eOrders: half before SIGTERM, which comes once 300 were processed
	// (with 250 ms each), so that it meets orders queued, in flight and
	// being posted; the property does not grow with the count (it was
	// 2,000: CI time).
	e2eOrders  = 1200
	e2eClients = 16
	// e2eDrain is the -drain-timeout the service runs with; it must exit 0
	// within it after SIGTERM.
	e2eDrain = 10 * time.Second
)

var buildOnce struct {
	sync.Once
	bin string
	err error
}

// serviceBinary builds the service once per test binary, with the race
// detector when the tests run with it.
func serviceBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "queuekit-gin-e2e-")
		if err != nil {
			buildOnce.err = err
			return
		}
		buildOnce.bin = filepath.Join(dir, "gin")
		args := []string{"build", "-o", buildOnce.bin}
		if raceEnabled {
			args = append(args, "-race")
		}
		out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
		if err != nil {
			buildOnce.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildOnce.err != nil {
		t.Fatal(buildOnce.err)
	}
	return buildOnce.bin
}

var (
	reListening = regexp.MustCompile(`msg=listening addr=(\S+)`)
	reProcessed = regexp.MustCompile(`msg="order processed" .*order=(ord_[0-9a-f]+)`)
	reReport    = regexp.MustCompile(`msg="shutdown report" (.*)`)
)

// proc is a running service process and what it logged.
type proc struct {
	t    *testing.T
	cmd  *exec.Cmd
	base string // http://host:port

	mu        sync.Mutex
	processed map[string]int // order id → times processed in this run
	report    map[string]string
	reportRaw string
	logTail   []string
	exited    chan struct{}
	exitErr   error
}

func startService(t *testing.T, args ...string) *proc {
	t.Helper()
	return startServiceEnv(t, nil, args...)
}

// startServiceEnv is startService with more environment variables.
func startServiceEnv(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(serviceBinary(t), append([]string{"-addr", "127.0.0.1:0"}, args...)...)
	// Neither a broker nor an orchestrator unless the test says so, and a
	// database of the test's own unless it names one (-database-url wins
	// over DATABASE_URL).
	cmd.Env = append(os.Environ(), "AMQP_URL=", "KAFKA_BROKERS=", "KUBERNETES_SERVICE_HOST=", "DATABASE_URL="+testDatabase(t))
	cmd.Env = append(cmd.Env, env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, cmd: cmd, processed: make(map[string]int), exited: make(chan struct{})}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			if m := reProcessed.FindStringSubmatch(line); m != nil {
				p.processed[m[1]]++
			} else {
				p.logTail = append(p.logTail, line)
				if len(p.logTail) > 60 {
					p.logTail = p.logTail[1:]
				}
			}
			if m := reReport.FindStringSubmatch(line); m != nil {
				p.report, p.reportRaw = parseLogfmt(m[1]), line
			}
			p.mu.Unlock()
			if m := reListening.FindStringSubmatch(line); m != nil {
				addr <- m[1]
			}
		}
		p.exitErr = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = cmd.Process.Kill()
			<-p.exited
		}
	})
	select {
	case a := <-addr:
		p.base = "http://" + a
	case <-p.exited:
		t.Fatalf("service exited before listening: %v\n%s", p.exitErr, p.tail())
	case <-time.After(60 * time.Second):
		t.Fatalf("service did not listen within 60s\n%s", p.tail())
	}
	return p
}

func (p *proc) tail() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.logTail, "\n")
}

func (p *proc) processedCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.processed)
}

func (p *proc) processedIDs() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]int, len(p.processed))
	for k, v := range p.processed {
		out[k] = v
	}
	return out
}

// waitReady polls /readyz until it answers 200.
func (p *proc) waitReady(cl *http.Client) {
	p.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if resp, err := cl.Get(p.base + "/readyz"); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("/readyz never answered 200\n%s", p.tail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// postOrders posts n orders from e2eClients concurrent clients, until n were
// attempted or stop is closed, and returns the ids of the accepted ones (202).
// It counts the answered posts in answered as it goes; the clients wait for
// resume before they post order number pauseAt and those after it.
func postOrders(t *testing.T, base string, n int, stop <-chan struct{}, answered *atomic.Int64, pauseAt int64, resume <-chan struct{}) (accepted []string, refused, failed int) {
	var mu sync.Mutex
	var next atomic.Int64
	var wg sync.WaitGroup
	for range e2eClients {
		wg.Go(func() {
			cl := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{}}
			defer cl.CloseIdleConnections()
			for {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				if i >= pauseAt {
					select {
					case <-resume:
					case <-stop:
						return
					}
				}
				select {
				case <-stop:
					return
				default:
				}
				body := fmt.Sprintf(`{"item": "book-%d", "quantity": %d}`, i, 1+i%5)
				resp, err := cl.Post(base+"/orders", "application/json", strings.NewReader(body))
				if err != nil {
					answered.Add(1)
					mu.Lock()
					failed++ // the service is gone: not accepted
					mu.Unlock()
					continue
				}
				var out struct {
					ID string `json:"id"`
				}
				_ = json.NewDecoder(resp.Body).Decode(&out)
				resp.Body.Close()
				answered.Add(1)
				mu.Lock()
				switch {
				case resp.StatusCode == http.StatusAccepted && out.ID != "":
					accepted = append(accepted, out.ID)
				case resp.StatusCode == http.StatusServiceUnavailable:
					refused++
				default:
					t.Errorf("POST /orders = %d; want 202 or, while shutting down, 503", resp.StatusCode)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return accepted, refused, failed
}

// sigtermMidProcessing waits until the service has processed at least
// atLeast orders and also() holds, sends SIGTERM, calls afterSignal, and
// watches /readyz until the process exits.
// It fails the test unless /readyz answered 503 while the consumer was
// draining and the process exited 0 within e2eDrain.
func (p *proc) sigtermMidProcessing(atLeast int, also func() bool, afterSignal func()) {
	t := p.t
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for p.processedCount() < atLeast || !also() {
		if time.Now().After(deadline) {
			t.Fatalf("only %d orders processed after 60s\n%s", p.processedCount(), p.tail())
		}
		time.Sleep(5 * time.Millisecond)
	}
	cl := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	sent := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	afterSignal()
	var sawDraining, saw200 bool
	var codes []int
	func() {
		for {
			select {
			case <-p.exited:
				return
			default:
			}
			resp, err := cl.Get(p.base + "/readyz")
			if err != nil {
				time.Sleep(time.Millisecond)
				continue
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if len(codes) == 0 || codes[len(codes)-1] != resp.StatusCode {
				codes = append(codes, resp.StatusCode)
			}
			if resp.StatusCode == http.StatusOK {
				saw200 = true
			}
			if resp.StatusCode == http.StatusServiceUnavailable && strings.Contains(string(b), `"state":"draining"`) {
				sawDraining = true
			}
		}
	}()
	took := time.Since(sent)
	if p.exitErr != nil {
		t.Fatalf("service exit after SIGTERM: %v; want exit code 0\n%s", p.exitErr, p.tail())
	}
	if took > e2eDrain {
		t.Errorf("service exited %v after SIGTERM; want within the drain timeout %v", took, e2eDrain)
	}
	// The first answers may be 200 if they were served before the signal
	// was handled; after the first 503 there must be no 200.
	if i := slices.Index(codes, http.StatusServiceUnavailable); i < 0 || slices.Contains(codes[i:], http.StatusOK) {
		t.Errorf("/readyz answers after SIGTERM went %v; want 503 from the first 503 until exit", codes)
	}
	if !sawDraining {
		t.Errorf("/readyz never answered 503 with the consumer draining (answers %v, 200 seen: %v)", codes, saw200)
	}
	t.Logf("SIGTERM after %d processed; exit 0 after %v; /readyz went %v", atLeast, took.Round(time.Millisecond), codes)
}

// posted is what the clients of postOrders saw.
type posted struct {
	accepted        []string // ids answered 202
	refused, failed int      // answered 503; not answered (the service was gone)
}

// postAndSIGTERM waits until the service is ready and posts n orders from
// concurrent clients: the first half, then, once atLeast orders were processed,
// SIGTERM and at once the second half, so that the signal lands while orders
// are being both processed and posted. The clients post all n; once the
// service has exited, their posts fail at once.
func (p *proc) postAndSIGTERM(n, atLeast int) posted {
	t := p.t
	t.Helper()
	p.waitReady(&http.Client{Timeout: 2 * time.Second})
	stop, resume := make(chan struct{}), make(chan struct{})
	res := make(chan posted, 1)
	var answered atomic.Int64
	half := int64(n / 2)
	go func() {
		a, r, f := postOrders(t, p.base, n, stop, &answered, half+1, resume)
		res <- posted{a, r, f}
	}()
	var r posted
	received := false
	var once sync.Once
	stopPosting := func() { once.Do(func() { close(stop) }) }
	defer func() { // also when sigtermMidProcessing fails the test
		stopPosting()
		if !received {
			<-res
		}
	}()
	p.sigtermMidProcessing(atLeast,
		func() bool { return answered.Load() >= half },
		func() { close(resume) })
	r, received = <-res, true // the clients post all n; the last ones find no service
	if got := len(r.accepted) + r.refused + r.failed; got != n {
		t.Errorf("clients posted %d orders; want %d", got, n)
	}
	if r.refused+r.failed == 0 {
		t.Errorf("all %d posts accepted: no post met the shutdown, so the test did not exercise intake at shutdown", len(r.accepted))
	}
	return r
}

func (p *proc) reportInt(t *testing.T, key string) int {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.report == nil {
		t.Fatalf("no shutdown report logged\n%s", strings.Join(p.logTail, "\n"))
	}
	n, err := strconv.Atoi(p.report[key])
	if err != nil {
		t.Fatalf("shutdown report %q = %q: %v", key, p.report[key], err)
	}
	return n
}

// With the in-memory broker (-broker memory) the queue ends with the
// process: the shutdown report must account for every accepted order,
// processed or left, where left is left_queue, the orders the relay had
// handed to the memory broker (lost at exit: the outbox marked them sent),
// plus left_outbox, those it had not handed over yet (relayed by the next
// run). The default broker, which keeps its queue, is tested by
// TestEndToEndSQLiteSIGTERMAndSIGKILLProcessEveryOrderOnce.
func TestEndToEndMemorySIGTERMLosesNoOrder(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the service: skipped with -short")
	}
	// Each runs its own service processes (own database, queue or
	// cluster): in parallel with the other end-to-end tests (CI time).
	t.Parallel()
	p := startService(t, "-broker", "memory", "-drain-timeout", e2eDrain.String(), "-process-time", "250ms", "-concurrency", "32")
	r := p.postAndSIGTERM(e2eOrders, 300)

	accepted, processed, left := p.reportInt(t, "accepted"), p.reportInt(t, "processed"), p.reportInt(t, "left")
	failedOrders := p.reportInt(t, "failed")
	t.Logf("service logged: %s", p.reportRaw)
	t.Logf("posted: %d accepted, %d refused while shutting down, %d not answered; report: accepted=%d processed=%d left=%d failed=%d",
		len(r.accepted), r.refused, r.failed, accepted, processed, left, failedOrders)
	if accepted != len(r.accepted) {
		t.Errorf("service accepted %d orders; clients got 202 for %d", accepted, len(r.accepted))
	}
	if processed+left+failedOrders != accepted || failedOrders != 0 {
		t.Errorf("processed %d + left %d + failed %d != accepted %d: orders unaccounted for", processed, left, failedOrders, accepted)
	}
	ids := p.processedIDs()
	if len(ids) != processed {
		t.Errorf("%d orders logged as processed; report says %d", len(ids), processed)
	}
	acc := make(map[string]bool, len(r.accepted))
	for _, id := range r.accepted {
		acc[id] = true
	}
	for id := range ids {
		if !acc[id] {
			t.Errorf("order %s processed but never accepted", id)
		}
	}
	if processed == 0 || left == 0 {
		t.Errorf("processed %d, left %d: SIGTERM did not land in the middle of processing", processed, left)
	}
}

// With RabbitMQ the queue outlives the process: after a restart, every
// accepted order is processed in one of the two runs.
func TestEndToEndRabbitMQSIGTERMAndRestartProcessesEveryOrder(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the service: skipped with -short")
	}
	// Each runs its own service processes (own database, queue or
	// cluster): in parallel with the other end-to-end tests (CI time).
	t.Parallel()
	url := amqpURLForTest(t)
	queue := fmt.Sprintf("queuekit-gin-e2e-%d-%d", os.Getpid(), time.Now().UnixNano())
	t.Cleanup(func() { deleteQueues(t, url, queue) })
	restartScenario(t, []string{"-amqp-url", url, "-queue", queue}, func(p1 *proc, accepted int) {
		// The queue is the test's own: what run 1 did not process is in it
		// or in the outbox. An order can be in both: the relay stopped
		// after RabbitMQ took a batch and before it marked the rows sent,
		// so run 2 publishes them again (at least once; the inbox acks
		// the second copy). Hence at least, not exactly.
		if left := p1.reportInt(t, "left"); len(p1.processedIDs())+left < accepted {
			t.Errorf("run 1: processed %d + left (queue and outbox) %d < accepted %d: orders lost", len(p1.processedIDs()), left, accepted)
		}
	}, func(p2 *proc) {
		// The admin report carries the queue's depth and consumers, from the broker.
		if code, rep := do(t, "GET", p2.base+"/admin/api/runners", ""); code != http.StatusOK || !strings.Contains(fmt.Sprint(rep), "consumers:1") {
			t.Errorf("GET /admin/api/runners = %d %v; want the queue's backlog with 1 consumer", code, rep)
		}
	})
	if n, err := queueDepth(url, queue); err != nil || n != 0 {
		t.Errorf("queue depth after run 2 = %d, %v; want 0", n, err)
	}
}

// With Kafka (an in-process kfake cluster the service reaches over
// loopback) the topic and the group's committed offsets outlive the
// process: run 1 drains and commits, run 2 resumes there.
func TestEndToEndKafkaSIGTERMAndRestartProcessesEveryOrder(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the service: skipped with -short")
	}
	// Each runs its own service processes (own database, queue or
	// cluster): in parallel with the other end-to-end tests (CI time).
	t.Parallel()
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	topic := fmt.Sprintf("gin-e2e-%d", os.Getpid())
	restartScenario(t, []string{"-kafka-brokers", strings.Join(c.ListenAddrs(), ","), "-queue", topic}, nil, func(p2 *proc) {
		// Lag counts from the committed offsets, which trail the handling
		// by up to the commit interval (1 s), and the report asks the
		// broker at most every 10 s: poll until run 2's commits show.
		deadline := time.Now().Add(40 * time.Second)
		for {
			code, rep := do(t, "GET", p2.base+"/admin/api/runners", "")
			if code == http.StatusOK && strings.Contains(fmt.Sprint(rep), "messages:0") {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("GET /admin/api/runners = %d %v; want the group's lag, 0 once run 2 caught up and committed", code, rep)
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
}

// restartScenario runs the service with brokerArgs: run 1 takes 2,000 orders
// and gets SIGTERM mid-processing (see postAndSIGTERM); run 2 starts on the
// same broker and database and processes the rest: what run 1 left at the
// broker and in the outbox. Every order accepted in run 1 must be processed
// in one of the runs (a redelivery is harmless: the inbox acks it). after1 and during2 add broker-specific checks (nil: none).
func restartScenario(t *testing.T, brokerArgs []string, after1 func(p1 *proc, accepted int), during2 func(p2 *proc)) (run1, run2 map[string]int) {
	t.Helper()
	// One database for both runs: what run 1 left in the outbox, run 2
	// relays.
	common := append(brokerArgs, "-database-url", testDatabase(t), "-drain-timeout", e2eDrain.String(), "-concurrency", "32")
	p1 := startService(t, append(common, "-process-time", "250ms")...)
	r := p1.postAndSIGTERM(e2eOrders, 300)
	run1 = p1.processedIDs()
	if got := p1.reportInt(t, "accepted"); got != len(r.accepted) {
		t.Errorf("run 1 accepted %d orders; clients got 202 for %d", got, len(r.accepted))
	}
	if after1 != nil {
		after1(p1, len(r.accepted))
	}
	t.Logf("run 1 logged: %s", p1.reportRaw)

	// Run 2 processes what run 1 left.
	p2 := startService(t, append(common, "-process-time", "1ms")...)
	missing := func() []string {
		run2 := p2.processedIDs()
		var out []string
		for _, id := range r.accepted {
			if run1[id] == 0 && run2[id] == 0 {
				out = append(out, id)
			}
		}
		return out
	}
	deadline := time.Now().Add(90 * time.Second)
	for len(missing()) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if during2 != nil {
		during2(p2)
	}
	if err := p2.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-p2.exited
	if p2.exitErr != nil {
		t.Errorf("run 2 exit: %v; want 0\n%s", p2.exitErr, p2.tail())
	}
	run2 = p2.processedIDs()
	dups := 0
	for id := range run2 {
		if run1[id] > 0 {
			dups++
		}
	}
	t.Logf("accepted %d (refused %d while shutting down, %d unanswered); processed %d in run 1, %d in run 2 (%d in both)",
		len(r.accepted), r.refused, r.failed, len(run1), len(run2), dups)
	if m := missing(); len(m) > 0 {
		t.Errorf("%d accepted orders processed in neither run, e.g. %v", len(m), m[:min(5, len(m))])
	}
	if len(run1) == 0 || len(run2) == 0 {
		t.Errorf("run 1 processed %d, run 2 %d: SIGTERM did not land in the middle of processing", len(run1), len(run2))
	}
	return run1, run2
}

func queueDepth(url, queue string) (int, error) {
	conn, err := amqp.Dial(url)
	if err != nil {
		return -1, err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return -1, err
	}
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	return q.Messages, err
}

func deleteQueues(t *testing.T, url, queue string) {
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Logf("cleanup: %v", err)
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return
	}
	for _, q := range []string{queue, queue + ".dlq", queue + ".retry"} {
		_, _ = ch.QueueDelete(q, false, false, false)
	}
	for _, x := range []string{queue, queue + ".dlx"} {
		_ = ch.ExchangeDelete(x, false, false)
	}
}

// parseLogfmt parses the key=value pairs of a slog text line.
func parseLogfmt(s string) map[string]string {
	out := make(map[string]string)
	for len(s) > 0 {
		s = strings.TrimLeft(s, " ")
		eq := strings.IndexByte(s, '=')
		if eq < 0 {
			break
		}
		key := s[:eq]
		s = s[eq+1:]
		var val string
		if strings.HasPrefix(s, `"`) {
			if v, err := strconv.QuotedPrefix(s); err == nil {
				val, _ = strconv.Unquote(v)
				s = s[len(v):]
			}
		} else if sp := strings.IndexByte(s, ' '); sp >= 0 {
			val, s = s[:sp], s[sp:]
		} else {
			val, s = s, ""
		}
		out[key] = val
	}
	return out
}
