package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/twmb/franz-go/pkg/kfake"
)

// The same service runs on Kafka: here on an in-process Kafka-protocol
// cluster (kfake, a protocol-level stand-in for Apache Kafka). The service
// creates its topic and dead-letter topic, joins its consumer group, and
// processes what it accepts. It does so on each Kafka adapter
// (-kafka-client): kafka-go's and franz-go's.
func TestServiceOnKafka(t *testing.T) {
	for _, client := range []string{"kafka-go", "franz"} {
		t.Run(client, func(t *testing.T) { testServiceOnKafka(t, client) })
	}
}

func testServiceOnKafka(t *testing.T, client string) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close) // after the service's own cleanup, registered later
	base, s, stop := startInProcess(t, testConfig(t, "-kafka-brokers", strings.Join(c.ListenAddrs(), ","), "-kafka-client", client, "-process-time", "1ms"))
	if s.backend.name != "kafka" {
		t.Fatalf("backend = %s; want kafka", s.backend.name)
	}
	waitReady(t, base, http.StatusOK)
	var ids []string
	for range 50 {
		code, body := do(t, "POST", base+"/orders", `{"item": "book", "quantity": 1}`)
		if code != http.StatusAccepted {
			t.Fatalf("POST /orders = %d %v; want 202", code, body)
		}
		ids = append(ids, body["id"].(string))
	}
	for _, id := range ids {
		waitStatus(t, base, id, statusProcessed)
	}
	// A bad order that reaches the topic by other means is dead-lettered
	// and recorded under its order id, not under the record's
	// topic/partition/offset.
	bad := &broker.Message{ID: "ord_bad", Body: []byte(`{"id":"ord_bad","item":"x","quantity":0}`), Header: map[string]string{headerOrderID: "ord_bad"}}
	if err := s.publish(context.Background(), bad); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, base, "ord_bad", statusFailed)
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(metrics), `queuekit_backlog_partition_messages{consumer="orders",partition=`) {
		t.Error("GET /metrics lacks the Kafka lag of the orders consumer")
	}
	// The admin report carries the lag per partition too.
	if code, rep := do(t, "GET", base+"/admin/api/runners", ""); code != http.StatusOK || !strings.Contains(fmt.Sprint(rep), "partitions:map[") {
		t.Errorf("GET /admin/api/runners = %d %v; want the orders consumer's lag per partition", code, rep)
	}
	start := time.Now()
	if err := stop(); err != nil {
		t.Fatalf("run = %v; want nil after a graceful shutdown", err)
	}
	t.Logf("50 orders processed on Kafka (kfake) with the %s adapter; shutdown took %v", client, time.Since(start).Round(time.Millisecond))
}
