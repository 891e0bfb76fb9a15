package rabbitmq

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// The environment of the redriving child process of
// TestDeadLettersRedriveCrash.
const (
	crashEnvQueue = "QUEUEKIT_TEST_REDRIVE_QUEUE"
	crashEnvURL   = "QUEUEKIT_TEST_REDRIVE_URL"
)

// TestHelperRedrive is the child process of TestDeadLettersRedriveCrash: it
// redrives every dead letter of the queue its environment names, and is
// killed (SIGKILL) half-way. Run alone, it does nothing.
func TestHelperRedrive(t *testing.T) {
	q := os.Getenv(crashEnvQueue)
	if q == "" {
		t.Skip("the child process of TestDeadLettersRedriveCrash")
	}
	dl, err := NewDeadLetters(DeadLetterConfig{Dialer: Dialer{URL: os.Getenv(crashEnvURL)}, Queue: q, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer dl.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := dl.Redrive(ctx, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{})
	t.Logf("redrive finished before the kill: %d done, %v", len(res.Done), err)
}

// TestDeadLettersRedriveCrash is the "redrive under a crash" must-show of
// issue 11: 1,000 dead letters; a child process redrives them all and is
// killed with SIGKILL once the source queue holds some but not all; a
// second Redrive then finishes the job. Every one of the 1,000 messages is
// in the source queue once or twice (a copy confirmed but its dead letter
// not yet acknowledged when the process died), never missing, and the
// dead-letter queue is empty.
func TestDeadLettersRedriveCrash(t *testing.T) {
	q, _, dl := dlFixture(t, Classic)
	const n = 1000
	fillDeadLetters(t, q, n)
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperRedrive$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashEnvQueue+"="+q, crashEnvURL+"="+amqpURL())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	killedAt := -1
	deadline := time.Now().Add(time.Minute)
	for killedAt < 0 {
		r, err := readyCount(q)
		switch {
		case err != nil:
			t.Fatalf("count %s: %v", q, err)
		case r >= n/2:
			_ = cmd.Process.Signal(syscall.SIGKILL)
			killedAt = r
		case time.Now().After(deadline):
			_ = cmd.Process.Kill()
			t.Fatal("the child redrove nothing within a minute")
		}
		select {
		case err := <-exited:
			if killedAt < 0 {
				t.Fatalf("the child exited before it was killed: %v", err)
			}
			exited <- err
		default:
		}
		time.Sleep(time.Millisecond)
	}
	<-exited
	if killedAt >= n {
		t.Fatalf("the child redrove all %d before the kill; nothing was tested", killedAt)
	}
	// The broker gives back the dead letters the child held when it sees
	// its connection go: then every message is ready in one queue or the
	// other (or both).
	waitFor(t, 30*time.Second, "the child's dead letters back", func() bool {
		a, err1 := readyCount(q)
		b, err2 := readyCount(q + ".dlq")
		return err1 == nil && err2 == nil && a+b >= n
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	left, err := dl.Count(ctx, broker.DeadLetterFilter{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := dl.Redrive(ctx, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{})
	if err != nil {
		t.Fatalf("second Redrive = %d done, %v", len(res.Done), err)
	}
	if c, err := dl.Count(ctx, broker.DeadLetterFilter{}); err != nil || c != 0 {
		t.Fatalf("dead letters left = %d, %v; want 0", c, err)
	}
	seen := map[string]int{}
	for _, d := range takeAll(t, q) {
		seen[d.MessageId]++
	}
	once, twice, missing, more := 0, 0, 0, 0
	for i := range n {
		switch seen[fmt.Sprintf("msg-%05d", i)] {
		case 0:
			missing++
		case 1:
			once++
		case 2:
			twice++
		default:
			more++
		}
	}
	t.Logf("killed with %d copies in the source queue; %d dead letters left, %d redriven by the second run; of %d: once %d, twice %d, missing %d, more %d",
		killedAt, left, len(res.Done), n, once, twice, missing, more)
	if missing > 0 || more > 0 {
		t.Fatalf("%d messages missing, %d more than twice", missing, more)
	}
}
