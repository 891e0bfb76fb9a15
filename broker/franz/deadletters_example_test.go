package franz_test

import (
	"context"
	"fmt"
	"log"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/franz"
)

// An operator's round: see why orders failed, then send back those that
// failed on a fixed bug.
func ExampleNewDeadLetters() {
	dl, err := franz.NewDeadLetters(franz.DeadLetterConfig{Brokers: []string{"localhost:9092"}, Topic: "orders"})
	if err != nil {
		log.Fatal(err)
	}
	defer dl.Close(context.Background())
	ctx := context.Background()
	page, err := dl.List(ctx, broker.DeadLetterQuery{Limit: 20})
	if err != nil {
		log.Fatal(err)
	}
	for _, d := range page.Items {
		fmt.Println(d.ID, d.Reason.Err, d.Reason.Attempts)
	}
	res, err := dl.Redrive(ctx, broker.DeadLetterSelection{
		DeadLetterFilter: broker.DeadLetterFilter{Reason: "price lookup timed out"},
	}, broker.RedriveOptions{})
	fmt.Println(len(res.Done), "redriven", err)
}
