package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/queuekit/queuekit/broker/rabbitmq"
)

// binary is the queuekit command, built once by TestMain: the tests run it
// as operators do, as a child process.
var binary string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "queuekit-cli-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binary = filepath.Join(dir, "queuekit")
	out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		return 1
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	code = teardownRabbit(code)
	if n := rabbitSkipped.Load(); n > 0 {
		printSummary(fmt.Sprintf("queuekit: %d RabbitMQ test(s) of cmd/queuekit skipped: no RabbitMQ at %s (set QUEUEKIT_AMQP_URL or start rabbitmq-server)", n, rabbitmq.RedactURL(rabbit.base)))
	}
	return code
}

// result is what a run of the binary printed, and its exit code.
type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// queuekit runs the binary with args and env (added to a clean environment:
// no AMQP_URL or KAFKA_BROKERS of the machine's leaks in).
func queuekit(t *testing.T, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("queuekit %s: %v", strings.Join(args, " "), err)
	}
	t.Logf("$ queuekit %s\n%s", strings.Join(redactArgs(args), " "), r)
	return r
}

// wantCode fails the test when r did not exit with code.
func wantCode(t *testing.T, r result, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit code %d, want %d\n%s", r.code, code, r)
	}
}

// redactArgs hides the passwords of the AMQP URLs in args, for the test log.
func redactArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if strings.HasPrefix(a, "amqp") || strings.Contains(a, "://") {
			a = rabbitmq.RedactURL(a)
		}
		out[i] = a
	}
	return out
}

// printSummary prints line to stdout, and also to the terminal when go test
// hides the output of a passing package (package list mode, without -v).
func printSummary(line string) {
	fmt.Println(line)
	if testing.Verbose() {
		return
	}
	if fi, err := os.Stdout.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
		return
	}
	if tty, err := os.OpenFile("/dev/tty", os.O_WRONLY, 0); err == nil {
		fmt.Fprintln(tty, line)
		_ = tty.Close()
	}
}
