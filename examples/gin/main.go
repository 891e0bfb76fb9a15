// Command gin is what a real service embedding queuekit looks like: a Gin
// HTTP API that accepts orders and stores each with its message in one
// transaction (a transactional outbox), a relay that publishes the messages
// to a queue, consumers that process the orders in the background under a
// Supervisor with the standard middleware chain, each order's effect
// exactly once (an inbox), Kubernetes probes and Prometheus metrics, an
// admin page to watch the consumers, pause and resume them and redrive or
// purge their dead letters, and a graceful shutdown that loses no accepted
// order.
//
// # The flow
//
//	POST /orders → one transaction: the order row + its outbox row → 202
//	relay (runner "outbox-relay") → the broker (default: a SQL queue in the same database)
//	consumer "orders" → inbox transaction: the key, the order processed, processed_count + 1, stock − quantity → ack
//
// By default the database is a SQLite file, queuekit-gin.db in the working
// directory, and the queue a table in it, so the service needs no set-up
// and keeps its orders and its queue across restarts:
//
//	go run ./examples/gin
//	curl -si -XPOST localhost:8080/orders -d '{"item": "book", "quantity": 2}'
//	curl -s localhost:8080/orders/<id from the answer>
//	curl -s localhost:8080/readyz
//
// On PostgreSQL, and on another broker, by flag or environment:
//
//	DATABASE_URL=postgres://app:pw@localhost:5432/app go run ./examples/gin # or -database-url
//	AMQP_URL=amqp://guest:guest@localhost:5672/ go run ./examples/gin       # or -amqp-url
//	go run ./examples/gin -kafka-brokers localhost:9092                      # or KAFKA_BROKERS=…
//	go run ./examples/gin -kafka-brokers localhost:9092 -kafka-client franz  # the franz-go adapter, or KAFKA_CLIENT=franz
//	go run ./examples/gin -broker memory                                     # in-process: queued orders end with the process
//
// While the database cannot be reached at start, /readyz answers 503 with
// the reason and the service retries with backoff.
//
// # Endpoints
//
//	POST /orders                         {"item": "book", "quantity": 2} → 202 {"id": …} once committed; 400 with a reason on
//	                                     bad input, 413 over 64 KiB, 422 for an Idempotency-Key reused with another order
//	GET  /orders/:id                     the order from the database: accepted, processed or failed, processed_count
//	GET  /healthz                        liveness: 503 when a handler is stuck
//	GET  /readyz                         readiness: 503 unless every consumer is running, and from the start of shutdown
//	GET  /metrics                        Prometheus metrics (queuekit_*, Go runtime)
//	GET  /admin/                         the operator's page (package admin): every consumer's state, in-flight
//	                                     orders, rates, backlog and dead letters with their reasons; pause,
//	                                     resume, redrive and purge buttons, each change confirmed first
//	GET  /admin/api/runners              the same as JSON; POST /admin/api/pause, resume, redrive, purge
//
// The admin page and API answer only requests that carry the token of the
// ADMIN_TOKEN environment variable (Authorization: Bearer …; a browser: HTTP
// Basic, any user, the token as the password), or, when it is
// not set, requests from the loopback interface addressed to a loopback name
// (Host localhost, 127.0.0.0/8 or [::1], any port: a DNS-rebinding page's
// requests carry its own name). What changes anything is a POST that must
// come from the page's own origin and carry its CSRF token (JSON clients:
// the X-CSRF-Token header and cookie of a GET), so another site's page
// cannot press the buttons through an operator's browser:
//
//	open http://localhost:8080/admin/
//	curl -s -c /tmp/jar -D - -o /dev/null localhost:8080/admin/api/runners | grep -i x-csrf-token
//	curl -s -b /tmp/jar -H 'Content-Type: application/json' -H "X-CSRF-Token: $TOKEN" \
//	    -d '{"runner": "orders"}' localhost:8080/admin/api/pause
//
// # Dead letters: fail, see why, fix, redrive
//
// An order that cannot be processed is dead-lettered with the reason. To
// see it happen, make an item unavailable (standing for an item missing
// from the catalog):
//
//	go run ./examples/gin -unavailable-items gizmo
//	curl -s -XPOST localhost:8080/orders -d '{"item": "gizmo", "quantity": 1}'
//
// The order's status is failed, and /admin/ shows the dead letter and why:
// item "gizmo" is unavailable. Fix the cause (here: restart without the
// flag; the dead letter waits at the broker), then on /admin/ select it,
// press Redrive, check the dry run on the confirmation page and confirm:
// the order goes back to the queue with a fresh delivery budget and is
// processed.
//
// # When the database goes away
//
// Every order's effect is a transaction in the orders' database. While it is
// unavailable, the orders consumer's kill switch (killswitch.go) stops it
// taking orders instead of letting every order spend its delivery budget and
// be dead-lettered: /readyz answers 503 with the consumer "tripped" and the
// reason, /admin/ shows it, queuekit_events_total{event="tripped"} counts
// it. After -kill-switch-restart (30 s) it probes with one order at a time,
// and once the database answers again it runs as before. -kill-switch=false
// turns it off.
//
// # Shutdown
//
// On SIGINT or SIGTERM the service, in this order: answers 503 on /readyz, so
// that a load balancer stops sending traffic, and goes on accepting orders for
// -shutdown-delay while it notices (0 by default, 5 s when
// KUBERNETES_SERVICE_HOST is set); stops accepting orders (503) and waits for
// the orders being stored; stops the relay (unsent rows stay in the outbox)
// and drains the consumers: in-flight orders finish within -drain-timeout,
// the others stay in the queue (lost at exit with -broker memory); waits up to 1 s for
// clients to leave their keep-alive connections (until none has been open
// for 100 ms); stops the HTTP server; logs
// a shutdown report; and exits 0. From the first step on every answer
// carries Connection: close, so that clients leave their connections rather
// than have them closed under a request. The HTTP server keeps answering
// probes and /metrics until the consumers have drained, so an orchestrator
// sees 503 rather than a refused connection. All of it takes at most
// -shutdown-delay + -drain-timeout + about 11 s (settling, connections, HTTP
// shutdown): set the orchestrator's grace period above that. A second signal
// kills the process at once. The library installs no signal handlers: main
// does.
package main

import (
	"context"
	"errors"
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
	addr            string
	databaseURL     string // may hold a password: logged only through sqldb.Redact
	brokerKind      string // "sql" (default) or "memory", when neither RabbitMQ nor Kafka is set
	amqpURL         string // secret: never logged or printed
	amqpQueueType   string
	kafkaBrokers    string
	kafkaClient     string // "kafka-go" (default) or "franz": the Kafka adapter
	kafkaPartitions int
	queue           string
	concurrency     int
	maxQueued       int
	drainTimeout    time.Duration
	shutdownDelay   time.Duration
	processTime     time.Duration
	maxConns        int
	idleTimeout     time.Duration
	initialStock    int
	sqlVisibility   time.Duration
	adminToken      string // secret: never logged or printed
	orderIDSecret   []byte // secret: never logged or printed; empty: the one kept in the database (settings)
	// unavailableItems are the items whose orders fail for good (the
	// operator's workflow: fail, see why on /admin/, fix, redrive).
	unavailableItems []string
	// killSwitch pauses the orders consumer while its database is
	// unavailable (see killSwitchConfig); killSwitchRestart is how long it
	// stays paused before it probes the database with one order at a time.
	killSwitch        bool
	killSwitchRestart time.Duration
	logLevel          slog.Level
}

// orchestratedShutdownDelay is the default -shutdown-delay under Kubernetes
// (KUBERNETES_SERVICE_HOST is set in every pod): long enough for the
// endpoints controller and kube-proxy or an ingress to take the pod out of
// rotation after readiness fails. Locally the default is 0, so Ctrl-C stops
// the service at once.
const orchestratedShutdownDelay = 5 * time.Second

// defaultIdleTimeout is the default of -idle-timeout. Idle connections
// cost a slot of -max-conns (closed first when a new connection waits for
// one) and memory; 30 s frees them sooner than the 2 minutes it was (issue
// 9, hostile review). The side that closes an idle connection races the
// other's next request, and should be the load balancer: behind one whose
// idle timeout to its backends is longer (AWS ALB: 60 s), set -idle-timeout
// above it.
const defaultIdleTimeout = 30 * time.Second

func main() {
	cfg, err := parseConfig(os.Args[1:], os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gin:", err)
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.logLevel}))

	// The library installs no signal handlers: the program owns them. The
	// first SIGINT or SIGTERM starts the graceful shutdown; once it has,
	// the default handling is restored, so a second one kills the process.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() { <-ctx.Done(); stop() }()

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

// defaultDatabase is the database of a service started with neither
// -database-url nor DATABASE_URL: a SQLite file in the working directory,
// so that `go run ./examples/gin` needs no set-up and keeps its orders and
// its queue across restarts.
const defaultDatabase = "queuekit-gin.db"

// defaultInitialStock is the default of -initial-stock: generous, so that
// the stock runs out only where a test or a demonstration wants it to.
const defaultInitialStock = 1_000_000_000

// parseConfig reads flags from args; the environment fills in for flags that
// are not given (ADDR, DATABASE_URL, AMQP_URL, KAFKA_BROKERS; KUBERNETES_SERVICE_HOST for
// -shutdown-delay) and holds the secrets (ADMIN_TOKEN, ORDER_ID_SECRET). A broker flag
// given on the command line wins over both brokers' environment variables.
//
// Secrets (the AMQP URL and the database URL, which may carry passwords,
// the admin token and the order id secret) are read from the environment
// after parsing, never used as flag defaults: the flag package prints
// defaults on -h and on every usage error.
func parseConfig(args []string, getenv func(string) string) (config, error) {
	var cfg config
	fs := flag.NewFlagSet("gin", flag.ContinueOnError)
	fs.StringVar(&cfg.addr, "addr", ":8080", "HTTP listen address (env ADDR)")
	fs.StringVar(&cfg.databaseURL, "database-url", "", "the orders' database: a SQLite file (queuekit-gin.db, sqlite:PATH) or postgres://… (env DATABASE_URL, which keeps the password out of ps); default "+defaultDatabase)
	fs.StringVar(&cfg.brokerKind, "broker", "sql", "without -amqp-url or -kafka-brokers: sql (a durable queue in the orders' database) or memory (in-process: queued orders end with the process)")
	fs.StringVar(&cfg.amqpURL, "amqp-url", "", "run on RabbitMQ at this amqp:// or amqps:// URL (env AMQP_URL, which keeps the password out of ps)")
	fs.StringVar(&cfg.amqpQueueType, "amqp-queue-type", "classic", "RabbitMQ queue type when the queue is declared: classic or quorum")
	fs.StringVar(&cfg.kafkaBrokers, "kafka-brokers", "", "run on Kafka: comma-separated bootstrap brokers host:port (env KAFKA_BROKERS)")
	fs.StringVar(&cfg.kafkaClient, "kafka-client", "kafka-go", "with -kafka-brokers: the Kafka adapter, kafka-go (broker/kafka) or franz (broker/franz, on franz-go) (env KAFKA_CLIENT)")
	fs.IntVar(&cfg.kafkaPartitions, "kafka-partitions", 4, "partitions of the Kafka topics when the service creates them")
	fs.StringVar(&cfg.queue, "queue", "orders", "queue (RabbitMQ, memory) or topic (Kafka) of the orders; the consumer is named after it")
	fs.IntVar(&cfg.concurrency, "concurrency", 8, "orders handled at once")
	fs.IntVar(&cfg.maxQueued, "max-queued", 10000, "-broker memory only: refuse orders (503) while this many wait in the queue")
	fs.DurationVar(&cfg.drainTimeout, "drain-timeout", 15*time.Second, "how long in-flight orders may take to finish at shutdown")
	fs.DurationVar(&cfg.shutdownDelay, "shutdown-delay", 0, "at shutdown, how long /readyz answers 503 while orders are still accepted (time for a load balancer to notice); default 0, or 5s when KUBERNETES_SERVICE_HOST is set")
	fs.IntVar(&cfg.maxConns, "max-conns", 1024, "HTTP connections open at once; more wait until one closes (an idle keep-alive connection is closed for a waiting one)")
	fs.DurationVar(&cfg.idleTimeout, "idle-timeout", defaultIdleTimeout, "how long an idle keep-alive connection stays open; keep it above the idle timeout of a load balancer in front")
	fs.DurationVar(&cfg.sqlVisibility, "sql-visibility", 30*time.Second, "SQL queue: how long a delivery stays leased without renewal; a crashed process's deliveries are redelivered after it")
	fs.IntVar(&cfg.initialStock, "initial-stock", defaultInitialStock, "stock of an item the first time it is ordered (the stock table is seeded per item on its first order)")
	fs.DurationVar(&cfg.processTime, "process-time", 20*time.Millisecond, "simulated time to process an order (a database call)")
	fs.BoolVar(&cfg.killSwitch, "kill-switch", true, "pause the orders consumer while its database is unavailable, instead of spending the orders' delivery budgets (-kill-switch=false to turn it off)")
	fs.DurationVar(&cfg.killSwitchRestart, "kill-switch-restart", 30*time.Second, "how long the tripped orders consumer stays paused before it probes the database with one order at a time")
	unavailable := fs.String("unavailable-items", "", "comma-separated items whose orders fail for good and are dead-lettered, standing for items missing from the catalog (see /admin/ to redrive them once fixed)")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	if !given["addr"] {
		cfg.addr = envOr(getenv, "ADDR", cfg.addr)
	}
	if !given["database-url"] {
		cfg.databaseURL = envOr(getenv, "DATABASE_URL", defaultDatabase)
	}
	if !given["amqp-url"] && !given["kafka-brokers"] {
		cfg.amqpURL, cfg.kafkaBrokers = getenv("AMQP_URL"), getenv("KAFKA_BROKERS")
	}
	if !given["kafka-client"] {
		cfg.kafkaClient = envOr(getenv, "KAFKA_CLIENT", cfg.kafkaClient)
	}
	if !given["shutdown-delay"] && getenv("KUBERNETES_SERVICE_HOST") != "" {
		cfg.shutdownDelay = orchestratedShutdownDelay
	}
	cfg.adminToken = getenv("ADMIN_TOKEN")
	if sec := getenv("ORDER_ID_SECRET"); sec != "" {
		if len(sec) < minOrderIDSecretLen {
			return cfg, fmt.Errorf("ORDER_ID_SECRET must be at least %d bytes, not %d", minOrderIDSecretLen, len(sec))
		}
		cfg.orderIDSecret = []byte(sec)
	}
	for _, it := range strings.Split(*unavailable, ",") {
		if it = strings.TrimSpace(it); it != "" {
			cfg.unavailableItems = append(cfg.unavailableItems, it)
		}
	}
	if err := cfg.logLevel.UnmarshalText([]byte(*level)); err != nil {
		return cfg, fmt.Errorf("-log-level: %w", err)
	}
	switch {
	case cfg.amqpURL != "" && cfg.kafkaBrokers != "":
		return cfg, errors.New("choose one broker: RabbitMQ (-amqp-url, AMQP_URL) or Kafka (-kafka-brokers, KAFKA_BROKERS), not both")
	case cfg.concurrency < 1:
		return cfg, fmt.Errorf("-concurrency must be at least 1, not %d", cfg.concurrency)
	case cfg.kafkaClient != "kafka-go" && cfg.kafkaClient != "franz":
		return cfg, fmt.Errorf("-kafka-client must be kafka-go or franz, not %q", cfg.kafkaClient)
	case cfg.kafkaPartitions < 1:
		return cfg, fmt.Errorf("-kafka-partitions must be at least 1, not %d", cfg.kafkaPartitions)
	case cfg.maxQueued < 1:
		return cfg, fmt.Errorf("-max-queued must be at least 1, not %d", cfg.maxQueued)
	case cfg.maxConns < 1:
		return cfg, fmt.Errorf("-max-conns must be at least 1, not %d", cfg.maxConns)
	case cfg.sqlVisibility < time.Second:
		return cfg, fmt.Errorf("-sql-visibility must be at least 1s, not %v", cfg.sqlVisibility)
	case cfg.initialStock < 0:
		return cfg, fmt.Errorf("-initial-stock cannot be negative, not %d", cfg.initialStock)
	case cfg.brokerKind != "sql" && cfg.brokerKind != "memory":
		return cfg, fmt.Errorf("-broker must be sql or memory, not %q", cfg.brokerKind)
	case given["broker"] && (cfg.amqpURL != "" || cfg.kafkaBrokers != ""):
		return cfg, errors.New("-broker chooses between the embedded brokers: leave it out with RabbitMQ or Kafka")
	case strings.TrimSpace(cfg.databaseURL) == "":
		return cfg, errors.New("-database-url cannot be empty")
	case cfg.idleTimeout <= 0:
		return cfg, fmt.Errorf("-idle-timeout must be positive, not %v", cfg.idleTimeout)
	case cfg.drainTimeout <= 0:
		return cfg, fmt.Errorf("-drain-timeout must be positive, not %v", cfg.drainTimeout)
	case cfg.killSwitchRestart <= 0:
		return cfg, fmt.Errorf("-kill-switch-restart must be positive, not %v", cfg.killSwitchRestart)
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
