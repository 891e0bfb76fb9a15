package franz_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/franz"
)

// Redrive under a crash, against the Kafka protocol (in-process kfake
// cluster): 1,000 dead letters; a child process (this test binary, running
// TestHelperDeadLettersRedrive) redrives them and is killed with SIGKILL
// once some but not all copies reached the source topic; then Redrive runs
// again to completion. Every dead letter must reach the source once or
// twice (a copy written before the crash whose progress was not recorded is
// sent again), never zero times, and none is left.
//
// "all" redrives every dead letter: its progress is the progress marker
// and the group's committed offset. "filter" redrives the 900 whose reason
// matches, leaving every tenth: its progress past the first one left is
// done markers, then the progress marker once the next Redrive got past
// them.
func TestDeadLettersRedriveSurvivesSIGKILL(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"all", "filter"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			crashRedrive(t, mode)
		})
	}
}

const (
	crashDeadLetters = 1000
	crashChildEnv    = "QUEUEKIT_FRANZ_REDRIVE_CHILD"
)

// crashRecords returns how many records topic holds.
func crashRecords(t testing.TB, c *kfake.Cluster, topic string) int {
	t.Helper()
	adm, cl := dlAdmin(t, c)
	defer cl.Close()
	ends, err := adm.ListEndOffsets(dlCtx(t), topic)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	ends.Each(func(o kadm.ListedOffset) { n += int(o.Offset) })
	return n
}

func crashRedrive(t *testing.T, mode string) {
	topic := "crash-" + mode
	c := pubCluster(t, map[string]int32{topic: 4, topic + ".dlt": 2})
	want := map[string]bool{} // the bodies that must reach the source
	ds := make([]dlDead, crashDeadLetters)
	for i := range ds {
		// Dead letter i goes to partition i%2 of the dead-letter topic:
		// every tenth kept from index 4 on sits in partition 0, where the
		// child starts, so that its progress there is done markers.
		ds[i] = dlDead{part: int32(i % 2), body: "m" + strconv.Itoa(i), src: topic, srcPart: i % 4, srcOff: int64(i)}
		if mode == "filter" && i%10 == 4 {
			ds[i].err = "keep " + strconv.Itoa(i)
			continue
		}
		want[ds[i].body] = true
	}
	for i := 0; i < len(ds); i += 250 {
		dlWrite(t, c, topic+".dlt", ds[i:i+250]...)
	}

	// Each write to the source topic takes 30 ms more, so that the child
	// is still at work when it is killed.
	var slow atomic.Bool
	slow.Store(true)
	defer slow.Store(false)
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if slow.Load() {
			for _, tp := range req.(*kmsg.ProduceRequest).Topics {
				if tp.Topic == topic {
					time.Sleep(30 * time.Millisecond)
				}
			}
		}
		return nil, nil, false
	})

	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperDeadLettersRedrive$", "-test.v")
	cmd.Env = append(os.Environ(), crashChildEnv+"=1",
		"QUEUEKIT_FRANZ_REDRIVE_BROKERS="+strings.Join(c.ListenAddrs(), ","),
		"QUEUEKIT_FRANZ_REDRIVE_TOPIC="+topic,
		"QUEUEKIT_FRANZ_REDRIVE_MODE="+mode)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start child: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	killAt := len(want) / 3
	var atKill int
	for {
		select {
		case err := <-exited:
			t.Fatalf("the child ended before it was killed (%v); nothing was tested. Output:\n%s", err, out.String())
		default:
		}
		if n := crashRecords(t, c, topic); n >= killAt {
			atKill = n
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("kill child: %v", err)
	}
	err := <-exited
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child ended with %v; want killed by SIGKILL. Output:\n%s", err, out.String())
	}
	slow.Store(false)
	// A write the child sent before it died may still land; give it time.
	time.Sleep(200 * time.Millisecond)
	afterKill := crashRecords(t, c, topic)
	if afterKill >= len(want) {
		t.Fatalf("the source holds %d records after the kill; want fewer than %d (killed mid-redrive)", afterKill, len(want))
	}

	d := dlNew(t, c, topic)
	sel := broker.DeadLetterSelection{All: true}
	if mode == "filter" {
		sel = broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{Reason: "boom"}}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := d.Redrive(ctx, sel, broker.RedriveOptions{})
	if err != nil {
		t.Fatalf("second Redrive = %v", err)
	}

	got := map[string]int{}
	from := map[string]string{}
	for _, r := range pubRead(t, c, topic, crashRecords(t, c, topic)) {
		body := string(r.Value)
		got[body]++
		id := ""
		for _, h := range r.Headers {
			if h.Key == broker.HeaderRedrivenFrom {
				id = string(h.Value)
			}
		}
		if prev, ok := from[body]; ok && prev != id {
			t.Errorf("%s arrived as copies of %s and %s", body, prev, id)
		}
		from[body] = id
	}
	var once, twice, missing, more, stray int
	for body := range want {
		switch got[body] {
		case 0:
			missing++
			t.Errorf("%s never reached the source", body)
		case 1:
			once++
		case 2:
			twice++
		default:
			more++
			t.Errorf("%s reached the source %d times", body, got[body])
		}
	}
	for body := range got {
		if !want[body] {
			stray++
			t.Errorf("%s reached the source; it was not selected", body)
		}
	}
	left, err := d.Count(dlCtx(t), broker.DeadLetterFilter{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("mode %s: %d dead letters selected; child killed (SIGKILL) with %d copies in the source (%d once the last write landed); the second Redrive did %d; arrived once %d, twice %d, missing %d, more than twice %d, not selected %d; dead letters left %d",
		mode, len(want), atKill, afterKill, len(res.Done), once, twice, missing, more, stray, left)
	if wantLeft := crashDeadLetters - len(want); left != wantLeft {
		t.Errorf("Count after the second Redrive = %d; want %d", left, wantLeft)
	}
	if n, err := d.Count(dlCtx(t), broker.DeadLetterFilter{Reason: "boom"}); n != 0 || err != nil {
		t.Errorf("Count(boom) after the second Redrive = %d, %v; want 0", n, err)
	}
	if once+twice != len(want) {
		t.Errorf("once %d + twice %d = %d; want %d", once, twice, once+twice, len(want))
	}
}

// TestHelperDeadLettersRedrive is the child process of
// TestDeadLettersRedriveSurvivesSIGKILL: it runs one Redrive and is killed
// in the middle.
func TestHelperDeadLettersRedrive(t *testing.T) {
	if os.Getenv(crashChildEnv) != "1" {
		t.Skip("the child process of TestDeadLettersRedriveSurvivesSIGKILL")
	}
	d, err := franz.NewDeadLetters(franz.DeadLetterConfig{
		Brokers: strings.Split(os.Getenv("QUEUEKIT_FRANZ_REDRIVE_BROKERS"), ","),
		Topic:   os.Getenv("QUEUEKIT_FRANZ_REDRIVE_TOPIC"),
		Logger:  slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(context.Background())
	sel := broker.DeadLetterSelection{All: true}
	if os.Getenv("QUEUEKIT_FRANZ_REDRIVE_MODE") == "filter" {
		sel = broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{Reason: "boom"}}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := d.Redrive(ctx, sel, broker.RedriveOptions{})
	fmt.Printf("child: Redrive done %d, skipped %d, error %v\n", len(res.Done), len(res.Skipped), err)
}
