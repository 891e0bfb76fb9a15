// Command gin is what a real service embedding queuekit looks like: a Gin
// HTTP API that accepts orders and publishes them to a queue, consumers that
// process them in the background under a Supervisor with the standard
// middleware chain, Kubernetes probes and Prometheus metrics, admin endpoints
// to list, pause and resume consumers, and a graceful shutdown that loses no
// accepted order.
//
// It runs on the embedded in-memory broker, with no set-up:
//
//	go run ./examples/gin
//	curl -si -XPOST localhost:8080/orders -d '{"item": "book", "quantity": 2}'
//	curl -s localhost:8080/orders/<id from the answer>
//	curl -s localhost:8080/readyz
//
// and on RabbitMQ or Kafka by flag or environment:
//
//	go run ./examples/gin -amqp-url amqp://guest:guest@localhost:5672/   # or AMQP_URL=…
//	go run ./examples/gin -kafka-brokers localhost:9092                  # or KAFKA_BROKERS=…
//
// # Endpoints
//
//	POST /orders                         {"item": "book", "quantity": 2} → 202 {"id": …}; 400 with a reason on bad input
//	GET  /orders/:id                     the status the consumer recorded: accepted, processed or failed
//	GET  /healthz                        liveness: 503 when a handler is stuck
//	GET  /readyz                         readiness: 503 unless every consumer is running, and from the start of shutdown
//	GET  /metrics                        Prometheus metrics (queuekit_*, Go runtime)
//	GET  /admin/consumers                every consumer's state
//	POST /admin/consumers/:name/pause    stop intake; in-flight orders finish, the rest stay queued
//	POST /admin/consumers/:name/resume   start intake again
//
// # Shutdown
//
// On SIGINT or SIGTERM the service, in this order: answers 503 on /readyz, so
// that a load balancer stops sending traffic (and waits -shutdown-delay for it
// to notice); stops accepting orders (503) and waits for the publishes in
// progress; drains the consumers: in-flight orders finish within
// -drain-timeout, the others stay in the queue; stops the HTTP server; logs a
// shutdown report; and exits 0. The HTTP server keeps answering probes and
// /metrics until the consumers have drained, so an orchestrator sees 503
// rather than a refused connection. The library installs no signal handlers:
// main does.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// config is the service's configuration, from flags and environment.
type config struct {
	addr          string
	amqpURL       string
	amqpQueueType string
	kafkaBrokers  string
	queue         string
	concurrency   int
	drainTimeout  time.Duration
	shutdownDelay time.Duration
	processTime   time.Duration
	logLevel      slog.Level
}

func main() {
	cfg, err := parseConfig(os.Args[1:], os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gin:", err)
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.logLevel}))

	// The library installs no signal handlers: the program owns them.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		logger.Error("listen", "error", err)
		os.Exit(1)
	}
	if err := run(ctx, cfg, ln, logger); err != nil {
		logger.Error("exiting", "error", err)
		os.Exit(1)
	}
}

// parseConfig reads flags from args; AMQP_URL, KAFKA_BROKERS and ADDR fill
// in for flags that are not given.
func parseConfig(args []string, getenv func(string) string) (config, error) {
	var cfg config
	fs := flag.NewFlagSet("gin", flag.ContinueOnError)
	fs.StringVar(&cfg.addr, "addr", envOr(getenv, "ADDR", ":8080"), "HTTP listen address (env ADDR)")
	fs.StringVar(&cfg.amqpURL, "amqp-url", getenv("AMQP_URL"), "run on RabbitMQ at this amqp:// or amqps:// URL (env AMQP_URL)")
	fs.StringVar(&cfg.amqpQueueType, "amqp-queue-type", "classic", "RabbitMQ queue type when the queue is declared: classic or quorum")
	fs.StringVar(&cfg.kafkaBrokers, "kafka-brokers", getenv("KAFKA_BROKERS"), "run on Kafka: comma-separated bootstrap brokers host:port (env KAFKA_BROKERS)")
	fs.StringVar(&cfg.queue, "queue", "orders", "queue (RabbitMQ, memory) or topic (Kafka) of the orders; the consumer is named after it")
	fs.IntVar(&cfg.concurrency, "concurrency", 8, "orders handled at once")
	fs.DurationVar(&cfg.drainTimeout, "drain-timeout", 15*time.Second, "how long in-flight orders may take to finish at shutdown")
	fs.DurationVar(&cfg.shutdownDelay, "shutdown-delay", 0, "how long to answer 503 on /readyz before refusing orders at shutdown (time for a load balancer to notice)")
	fs.DurationVar(&cfg.processTime, "process-time", 20*time.Millisecond, "simulated time to process an order (a database call)")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if err := cfg.logLevel.UnmarshalText([]byte(*level)); err != nil {
		return cfg, fmt.Errorf("-log-level: %w", err)
	}
	switch {
	case cfg.concurrency < 1:
		return cfg, fmt.Errorf("-concurrency must be at least 1, not %d", cfg.concurrency)
	case cfg.drainTimeout <= 0:
		return cfg, fmt.Errorf("-drain-timeout must be positive, not %v", cfg.drainTimeout)
	case cfg.shutdownDelay < 0 || cfg.processTime < 0:
		return cfg, fmt.Errorf("-shutdown-delay and -process-time cannot be negative")
	case strings.TrimSpace(cfg.queue) == "":
		return cfg, fmt.Errorf("-queue cannot be empty")
	case cfg.amqpQueueType != "classic" && cfg.amqpQueueType != "quorum":
		return cfg, fmt.Errorf("-amqp-queue-type must be classic or quorum, not %q", cfg.amqpQueueType)
	}
	return cfg, nil
}

func envOr(getenv func(string) string, key, def string) string {
	if v := getenv(key); v != "" {
		return v
	}
	return def
}
