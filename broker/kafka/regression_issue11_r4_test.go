package kafka_test

// Regression tests for the review of the Kafka dead letters (issue 11,
// review R4), against the Kafka protocol (in-process kfake cluster). Each
// failed on the code before its fix.

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/kafka"
)

// R4 #1: a done topic someone else created with cleanup.policy=delete was
// used as it was: its markers expire, and the dead letters they mark come
// back. It is refused before anything is written or read.
func TestIssue11R4DoneTopicMustBeCompacted(t *testing.T) {
	for _, policy := range []string{"delete", "compact,delete"} {
		t.Run(policy, func(t *testing.T) {
			e := newEnv(t)
			e.needKfake(t)
			topic := e.dlTopics(t, "r4-policy", 1)
			dlt := topic + ".dlt"
			for i := range 3 {
				e.produceRecs(t, dlt, 0, dlRecord("k", "b", topic, 0, int64(i)))
			}
			e.createTopicWith(t, dlt+kafka.DeadLetterDoneSuffix,
				kafkago.ConfigEntry{ConfigName: "cleanup.policy", ConfigValue: policy},
				kafkago.ConfigEntry{ConfigName: "retention.ms", ConfigValue: "1000"})
			ctx := dlCtx(t)
			d := newDeadLetters(t, e, topic)
			res, err := d.Purge(ctx, broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: []string{"0:1"}}}, false)
			if !errors.Is(err, broker.ErrInvalidConfig) || !strings.Contains(err.Error(), "cleanup.policy") {
				t.Fatalf("Purge with a done topic of cleanup.policy %q: done %v, err %v; want an error wrapping ErrInvalidConfig naming cleanup.policy", policy, res.Done, err)
			}
			if len(res.Done) != 0 {
				t.Errorf("Purge refused, yet done %v", res.Done)
			}
			// A new instance refuses on load too (List, Count).
			d2 := newDeadLetters(t, e, topic)
			if _, err := d2.Count(ctx, broker.DeadLetterFilter{}); !errors.Is(err, broker.ErrInvalidConfig) {
				t.Errorf("Count with a done topic of cleanup.policy %q: err %v, want ErrInvalidConfig", policy, err)
			}
		})
	}
	// A done topic created compacted by someone else is used.
	t.Run("compact", func(t *testing.T) {
		e := newEnv(t)
		e.needKfake(t)
		topic := e.dlTopics(t, "r4-compact", 1)
		dlt := topic + ".dlt"
		for i := range 3 {
			e.produceRecs(t, dlt, 0, dlRecord("k", "b", topic, 0, int64(i)))
		}
		e.createTopicWith(t, dlt+kafka.DeadLetterDoneSuffix, kafkago.ConfigEntry{ConfigName: "cleanup.policy", ConfigValue: "compact"})
		ctx := dlCtx(t)
		d := newDeadLetters(t, e, topic)
		res, err := d.Purge(ctx, broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: []string{"0:1"}}}, false)
		if err != nil || len(res.Done) != 1 {
			t.Fatalf("Purge: done %v, err %v; want [0:1]", res.Done, err)
		}
		if n := count(t, newDeadLetters(t, e, topic), broker.DeadLetterFilter{}); n != 2 {
			t.Errorf("Count after the purge = %d, want 2", n)
		}
	})
}

// R4 #2: a Purge cut short while its done markers were on their way said
// the copies were sent and the next redrive sends them again (a purge sends
// no copies), and left out that the markers may have reached the broker
// (they did: the dead letter is gone, yet Done was empty).
func TestIssue11R4PurgeCutShortWritingMarkers(t *testing.T) {
	e := newEnv(t)
	e.needKfake(t)
	topic := e.dlTopics(t, "r4-cut", 1)
	dlt := topic + ".dlt"
	for i := range 3 {
		e.produceRecs(t, dlt, 0, dlRecord("k", "b", topic, 0, int64(i)))
	}
	done := dlt + kafka.DeadLetterDoneSuffix
	var armed atomic.Bool
	armed.Store(true)
	reached, release := make(chan struct{}), make(chan struct{})
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	e.cluster.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		for _, tp := range req.(*kmsg.ProduceRequest).Topics {
			if tp.Topic == done && armed.CompareAndSwap(true, false) {
				close(reached)
				e.cluster.SleepControl(func() { <-release })
			}
		}
		return nil, nil, false
	})
	ctx, cancel := context.WithCancel(dlCtx(t))
	defer cancel()
	go func() {
		<-reached
		cancel() // the markers are with the broker; the call ends before its answer
	}()
	d := newDeadLetters(t, e, topic)
	res, err := d.Purge(ctx, broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: []string{"0:1"}}}, false)
	close(release)
	if err == nil {
		t.Fatalf("Purge cut short: done %v, no error", res.Done)
	}
	msg := err.Error()
	if strings.Contains(msg, "cop") || strings.Contains(msg, "redrive") {
		t.Errorf("a purge's error talks of copies or redrives: %v", err)
	}
	if !strings.Contains(msg, "may have been purged") || !strings.Contains(msg, "0:1") {
		t.Errorf("a purge whose markers' outcome is unknown does not say 0:1 may have been purged: %v", err)
	}
}
