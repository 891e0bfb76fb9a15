// Command portable is one program that publishes and consumes orders through
// queuekit, and runs unchanged on the in-process broker, on RabbitMQ and on
// Kafka: only the constructors of its broker.Publisher and broker.Source
// differ.
//
// The program (program.go) publishes a batch of orders as JSON with
// broker.PublishJSON, keyed by customer, consumes them with a consumer.JSON
// handler, waits until every order was handled, stops gracefully and prints
// what happened: in a clean run each order handled once and acknowledged.
// The constructors (brokers.go) are the only code that names a broker.
//
//	go run ./examples/portable                     # the in-process broker
//	go run ./examples/portable -broker rabbitmq    # $QUEUEKIT_AMQP_URL, else amqp://guest:guest@127.0.0.1:5672/
//	go run ./examples/portable -broker kafka       # $QUEUEKIT_KAFKA_BROKERS, else an embedded kfake cluster
//	go run ./examples/portable -broker franz       # the same Kafka, through the franz-go adapter
//
// On RabbitMQ and Kafka the queue, exchange or topic is -dest (default
// queuekit-example-portable), and stays after the run, empty: a next run
// uses it again. Orders an earlier, interrupted run left there are handled
// and counted apart.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/broker/rabbitmq"
)

// defaultAMQPURL is used when QUEUEKIT_AMQP_URL is not set.
const defaultAMQPURL = "amqp://guest:guest@127.0.0.1:5672/"

// defaultDest is the queue, exchange or topic when -dest is not given.
const defaultDest = "queuekit-example-portable"

func main() {
	which := flag.String("broker", "memory", "memory, rabbitmq ($QUEUEKIT_AMQP_URL), kafka ($QUEUEKIT_KAFKA_BROKERS, else an embedded kfake cluster) or franz (the same Kafka through the franz-go adapter)")
	cfg := config{Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	flag.StringVar(&cfg.Dest, "dest", defaultDest, "the queue, exchange or topic")
	flag.IntVar(&cfg.Orders, "orders", 20, "how many orders to publish")
	flag.DurationVar(&cfg.Timeout, "timeout", time.Minute, "give up if the orders are not handled within this")
	flag.Parse()

	// The library installs no signal handlers: the program owns them.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := start(ctx, *which, cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "portable:", err)
		os.Exit(1)
	}
}

// start makes the publisher and the source of the broker named which, and
// runs the program on them.
func start(ctx context.Context, which string, cfg config, stdout io.Writer) error {
	if cfg.Orders < 0 || cfg.Orders > 100_000 {
		return fmt.Errorf("-orders %d: want 1 to 100000", cfg.Orders)
	}
	var (
		pub broker.Publisher
		src broker.Source
		err error
	)
	switch which {
	case "memory":
		b := memory.NewBroker()
		defer b.Close()
		fmt.Fprintln(stdout, "on the in-process broker (memory)")
		pub, src, err = onMemory(b, cfg.Dest)
	case "rabbitmq":
		url := os.Getenv("QUEUEKIT_AMQP_URL")
		if url == "" {
			url = defaultAMQPURL
		}
		fmt.Fprintf(stdout, "on RabbitMQ at %s\n", rabbitmq.RedactURL(url))
		pub, src, err = onRabbitMQ(url, cfg.Dest, cfg.Logger)
	case "kafka", "franz":
		var brokers []string
		for _, b := range strings.Split(os.Getenv("QUEUEKIT_KAFKA_BROKERS"), ",") {
			if b = strings.TrimSpace(b); b != "" {
				brokers = append(brokers, b)
			}
		}
		if len(brokers) == 0 {
			cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
			if err != nil {
				return fmt.Errorf("start the embedded kfake cluster: %w", err)
			}
			defer cluster.Close()
			brokers = cluster.ListenAddrs()
			fmt.Fprintln(stdout, "on an embedded kfake cluster (the Kafka protocol in process; a stand-in, not Apache Kafka)")
		} else {
			fmt.Fprintf(stdout, "on Kafka at %s\n", strings.Join(brokers, ","))
		}
		if which == "franz" {
			pub, src, err = onFranz(ctx, brokers, cfg.Dest, cfg.Logger)
		} else {
			pub, src, err = onKafka(ctx, brokers, cfg.Dest, cfg.Logger)
		}
	default:
		return fmt.Errorf("-broker %q: want memory, rabbitmq, kafka or franz", which)
	}
	if err != nil {
		return err
	}
	_, err = run(ctx, pub, src, cfg, stdout)
	return err
}
