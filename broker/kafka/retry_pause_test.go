package kafka_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker/kafka"
)

// TestRetryPauseResumeRaceTiersFollowTheLastCall: Pause and Resume called
// at once, many times; afterwards the tier consumers must be paused exactly
// when the main Source is. Each applied its state to the tiers after
// releasing the lock, so a Pause's late tier pause could follow the
// Resume: the tiers stayed paused (their retries never came back) while
// the main Source ran. No cluster call: Pause and Resume are local.
func TestRetryPauseResumeRaceTiersFollowTheLastCall(t *testing.T) {
	e := newEnv(t)
	_, cfg := retryTopicSource(t, e, "retry-pauserace", "g", []time.Duration{100 * time.Millisecond, time.Second})
	src := newSource(t, cfg)
	defer src.Close(context.Background())
	ctx := context.Background()
	for i := 0; i < 2000; i++ {
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			for range 50 {
				src.Pause(ctx)
			}
		}()
		go func() {
			defer wg.Done()
			for range 50 {
				src.Resume(ctx)
			}
		}()
		wg.Wait()
		main, tiers := kafka.PauseStates(src)
		for j, p := range tiers {
			if p != main {
				t.Fatalf("round %d: main Source paused = %v, tier %d paused = %v", i, main, j, p)
			}
		}
	}
}
