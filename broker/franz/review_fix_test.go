package franz_test

// Regression tests of the hostile review of broker/franz (issue 16,
// /work/notes/review-franz.md), against the Kafka protocol served by an
// in-process kfake cluster where a cluster is needed.

import (
	"errors"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/franz"
)

// panicOpt is a kgo.Opt whose apply panics (its embedded Opt is nil).
type panicOpt struct{ kgo.Opt }

// TestReviewBadClientOptionIsInvalidConfig (finding 1): a nil entry in
// ClientOptions, or an option that panics when kgo applies it, is an error
// wrapping broker.ErrInvalidConfig from every constructor, never a panic.
func TestReviewBadClientOptionIsInvalidConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		opt  kgo.Opt
	}{{"nil", nil}, {"panicking", panicOpt{}}} {
		t.Run(tc.name, func(t *testing.T) {
			opts := []kgo.Opt{kgo.ClientID("x"), tc.opt}
			check := func(what string, f func() error) {
				t.Helper()
				var err error
				func() {
					defer func() {
						if r := recover(); r != nil {
							err = errors.New("panicked")
							t.Errorf("%s panicked: %v", what, r)
						}
					}()
					err = f()
				}()
				if !errors.Is(err, broker.ErrInvalidConfig) {
					t.Errorf("%s = %v, want an error wrapping ErrInvalidConfig", what, err)
				}
			}
			check("NewSource", func() error {
				s, err := franz.NewSource(franz.Config{Brokers: []string{"localhost:9092"}, GroupID: "g", Topic: "t", ClientOptions: opts})
				if err == nil {
					s.Close(t.Context())
				}
				return err
			})
			check("NewPublisher", func() error {
				p, err := franz.NewPublisher(franz.PublisherConfig{Brokers: []string{"localhost:9092"}, ClientOptions: opts})
				if err == nil {
					p.Close(t.Context())
				}
				return err
			})
			check("NewDeadLetters+Count", func() error {
				d, err := franz.NewDeadLetters(franz.DeadLetterConfig{Brokers: []string{"localhost:9092"}, Topic: "t", ClientOptions: opts})
				if err != nil {
					return err
				}
				defer d.Close(t.Context())
				_, err = d.Count(t.Context(), broker.DeadLetterFilter{})
				return err
			})
		})
	}
}

var _ = strings.Contains
