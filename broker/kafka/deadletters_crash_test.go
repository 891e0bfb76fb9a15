package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/kafka"
)

// Redrive under a crash, against the Kafka protocol (in-process kfake
// cluster): 1,000 dead letters; a child process (this test binary, running
// TestHelperRedrive) redrives them and is killed with SIGKILL once some but
// not all copies reached the source topic; then Redrive runs again to
// completion. Every dead letter must reach the source once or twice (a copy
// written before the crash whose progress was not recorded is sent again),
// never zero times, and none is left.
//
// "all" redrives every dead letter: its progress is the group's committed
// offset. "filter" redrives the 900 whose reason matches, leaving every
// tenth: its progress past the first one left is the done topic (done
// markers), then the committed offset once the next Redrive got past them.
func TestDeadLettersRedriveSurvivesSIGKILL(t *testing.T) {
	for _, mode := range []string{"all", "filter"} {
		t.Run(mode, func(t *testing.T) { testRedriveCrash(t, mode) })
	}
}

const (
	crashDeadLetters = 1000
	childEnv         = "QUEUEKIT_KAFKA_REDRIVE_CHILD"
)

func testRedriveCrash(t *testing.T, mode string) {
	e := newEnv(t)
	e.needKfake(t) // slows the child's writes down with request control
	topic := e.dlTopics(t, "dl-crash-"+mode, 2)
	sp := specs(topic, crashDeadLetters)
	want := map[string]bool{} // the bodies that must reach the source
	for i := range sp {
		// Dead letter i goes to partition i%2 of the dead-letter topic:
		// every tenth kept from index 4 on sits in partition 0, where
		// the child starts, so that its progress there is done markers.
		if mode == "filter" && i%10 == 4 {
			sp[i].err = "keep " + itoa(i)
			continue
		}
		want[sp[i].body] = true
	}
	e.writeDeadLetters(t, topic+".dlt", sp)

	// Each write to the source topic takes 30 ms more, so that the child
	// is still at work when it is killed.
	var slow atomic.Bool
	slow.Store(true)
	defer slow.Store(false)
	e.cluster.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		if slow.Load() {
			for _, tp := range req.(*kmsg.ProduceRequest).Topics {
				if tp.Topic == topic {
					time.Sleep(30 * time.Millisecond)
				}
			}
		}
		return nil, nil, false
	})

	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperRedrive$", "-test.v")
	cmd.Env = append(os.Environ(), childEnv+"=1",
		"QUEUEKIT_KAFKA_REDRIVE_BROKERS="+strings.Join(e.brokers, ","),
		"QUEUEKIT_KAFKA_REDRIVE_TOPIC="+topic,
		"QUEUEKIT_KAFKA_REDRIVE_MODE="+mode)
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
		n := e.records(t, topic)
		if n >= killAt {
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
	afterKill := e.records(t, topic)
	if afterKill >= len(want) {
		t.Fatalf("the source holds %d records after the kill; want fewer than %d (killed mid-redrive)", afterKill, len(want))
	}

	d := newDeadLetters(t, e, topic)
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
	for _, m := range e.readTopic(t, topic, partitions) {
		body := string(m.Value)
		got[body]++
		id, _ := header(m, broker.HeaderRedrivenFrom)
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
	left := count(t, d, broker.DeadLetterFilter{})
	t.Logf("mode %s: %d dead letters selected; child killed (SIGKILL) with %d copies in the source (%d once the last write landed); the second Redrive did %d; arrived once %d, twice %d, missing %d, more than twice %d, not selected %d; dead letters left %d",
		mode, len(want), atKill, afterKill, len(res.Done), once, twice, missing, more, stray, left)
	wantLeft := crashDeadLetters - len(want)
	if left != wantLeft {
		t.Errorf("Count after the second Redrive = %d; want %d", left, wantLeft)
	}
	if n := count(t, d, broker.DeadLetterFilter{Reason: "boom"}); n != 0 {
		t.Errorf("Count(boom) after the second Redrive = %d; want 0", n)
	}
	if once+twice != len(want) {
		t.Errorf("once %d + twice %d = %d; want %d", once, twice, once+twice, len(want))
	}
}

// records returns how many records topic holds.
func (e *env) records(t testing.TB, topic string) int {
	n := 0
	for _, end := range e.endOffsets(t, topic) {
		n += int(end)
	}
	return n
}

// TestHelperRedrive is the child process of TestDeadLettersRedriveSurvivesSIGKILL:
// it runs one Redrive and is killed in the middle.
func TestHelperRedrive(t *testing.T) {
	if os.Getenv(childEnv) != "1" {
		t.Skip("the child process of TestDeadLettersRedriveSurvivesSIGKILL")
	}
	topic := os.Getenv("QUEUEKIT_KAFKA_REDRIVE_TOPIC")
	d, err := kafka.NewDeadLetters(kafka.DeadLetterConfig{
		Brokers: strings.Split(os.Getenv("QUEUEKIT_KAFKA_REDRIVE_BROKERS"), ","),
		Topic:   topic,
		Logger:  quietLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(context.Background())
	sel := broker.DeadLetterSelection{All: true}
	if os.Getenv("QUEUEKIT_KAFKA_REDRIVE_MODE") == "filter" {
		sel = broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{Reason: "boom"}}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := d.Redrive(ctx, sel, broker.RedriveOptions{})
	fmt.Printf("child: Redrive done %d, skipped %d, error %v\n", len(res.Done), len(res.Skipped), err)
}
