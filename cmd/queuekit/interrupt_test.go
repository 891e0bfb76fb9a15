package main

import (
	"bytes"
	"errors"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// silentServer accepts connections and never answers: a host that hangs.
func silentServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu   sync.Mutex
		held []net.Conn
		wg   sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	})
	return l.Addr().String()
}

// Ctrl-C (SIGINT) ends a command that waits for a broker: exit 4, at once,
// not after --timeout.
func TestInterrupt(t *testing.T) {
	for _, tc := range []struct{ name, flag, addr string }{
		{"RabbitMQ", "--amqp-url", "amqp://guest:guest@" + silentServer(t) + "/"},
		{"Kafka", "--kafka-brokers", silentServer(t)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			target := "--queue"
			if tc.flag == "--kafka-brokers" {
				target = "--topic"
			}
			cmd := exec.Command(binary, "dlq", "list", target, "q", tc.flag, tc.addr, "--timeout", "60s")
			cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(300 * time.Millisecond) // let it connect and wait
			if err := cmd.Process.Signal(os.Interrupt); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() != exitFailed {
					t.Fatalf("after SIGINT: %v, want exit %d\n%s", err, exitFailed, stderr.String())
				}
				if !strings.Contains(stderr.String(), "context canceled") && !strings.Contains(stderr.String(), "interrupt signal received") {
					t.Errorf("stderr does not say it was cancelled:\n%s", stderr.String())
				}
				t.Logf("stderr: %s", stderr.String())
			case <-time.After(30 * time.Second):
				_ = cmd.Process.Kill()
				<-done
				t.Fatal("queuekit did not end within 30s of SIGINT (its --timeout is 60s)")
			}
		})
	}
}
