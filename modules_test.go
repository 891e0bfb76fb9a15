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
// module graph, and is not held to their versions. Issue 16: one that imports
// the core and the franz-go adapter has no kafka-go, and no RabbitMQ client.
// The test builds such modules in a temporary directory (replacing queuekit's
// modules with this checkout) and reads their `go list -m all`.
func TestIssue10CoreAndRabbitMQModuleGraphHasNoIntegrations(t *testing.T) {
	checkModuleGraph(t, "rabbitmq", `_ = rabbitmq.Config{}`, []string{
		"github.com/prometheus/", "go.opentelemetry.io/", "github.com/segmentio/kafka-go", "github.com/twmb/franz-go",
		"github.com/queuekit/queuekit/broker/kafka", "github.com/queuekit/queuekit/middleware/promqueuekit", "github.com/queuekit/queuekit/middleware/otelqueuekit",
	})
}

func TestIssue16CoreAndFranzModuleGraphHasNoKafkaGo(t *testing.T) {
	checkModuleGraph(t, "franz", `_ = franz.Config{}`, []string{
		"github.com/prometheus/", "go.opentelemetry.io/", "github.com/segmentio/kafka-go", "github.com/rabbitmq/amqp091-go",
		"github.com/queuekit/queuekit/broker/kafka", "github.com/queuekit/queuekit/broker/rabbitmq",
	})
}

// checkModuleGraph builds a module importing the core and the adapter
// broker/<adapter> (use is a statement using it) and fails the test if its
// module graph holds any of banned.
func checkModuleGraph(t *testing.T, adapter, use string, banned []string) {
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
	github.com/queuekit/queuekit/broker/`+adapter+` v0.0.0
)

replace (
	github.com/queuekit/queuekit => `+root+`
	github.com/queuekit/queuekit/broker/`+adapter+` => `+filepath.Join(root, "broker", adapter)+`
	github.com/queuekit/queuekit/internal/kafkatest => `+filepath.Join(root, "internal", "kafkatest")+`
)
`)
	write("main.go", `package main

import (
	"github.com/queuekit/queuekit/broker/`+adapter+`"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
)

func main() {
	`+use+`
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
	t.Logf("go list -m all of a module importing the core and broker/%s (%d modules):\n%s", adapter, strings.Count(graph, "\n"), graph)
	for _, b := range banned {
		if strings.Contains(graph, b) {
			t.Errorf("the module graph holds %s", b)
		}
	}
}
