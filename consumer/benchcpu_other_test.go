//go:build !unix

package consumer_test

import "time"

// processCPU is not available here: the benchmarks report no cpu-ns/op.
func processCPU() (time.Duration, bool) { return 0, false }
