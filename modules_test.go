package queuekit_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Issue 10 item 6: a service that imports only the core and the RabbitMQ
// adapter has neither Prometheus, OpenTelemetry, kafka-go nor franz-go in its
// module graph, and is not held to their versions. The test builds such a
// module in a temporary directory (replacing queuekit's modules with this
// checkout) and reads its `go list -m all`.
func TestIssue10CoreAndRabbitMQModuleGraphHasNoIntegrations(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the go command")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command")
	}
	root, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("go.mod", `module example.com/svc

go 1.26.0

require (
	github.com/queuekit/queuekit v0.0.0
	github.com/queuekit/queuekit/broker/rabbitmq v0.0.0
)

replace (
	github.com/queuekit/queuekit => `+root+`
	github.com/queuekit/queuekit/broker/rabbitmq => `+filepath.Join(root, "broker", "rabbitmq")+`
)
`)
	write("main.go", `package main

import (
	"github.com/queuekit/queuekit/broker/rabbitmq"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
)

func main() {
	_ = rabbitmq.Config{}
	_ = consumer.Chain(middleware.Recover())
}
`)
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(goBin, args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	run("mod", "tidy")
	run("build", "./...")
	graph := run("list", "-m", "all")
	t.Logf("go list -m all of a module importing the core and RabbitMQ (%d modules):\n%s", strings.Count(graph, "\n"), graph)
	for _, banned := range []string{
		"github.com/prometheus/", "go.opentelemetry.io/", "github.com/segmentio/kafka-go", "github.com/twmb/franz-go",
		"github.com/queuekit/queuekit/broker/kafka", "github.com/queuekit/queuekit/middleware/promqueuekit", "github.com/queuekit/queuekit/middleware/otelqueuekit",
	} {
		if strings.Contains(graph, banned) {
			t.Errorf("the module graph holds %s", banned)
		}
	}
}
