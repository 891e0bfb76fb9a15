//go:build unix

package consumer_test

import (
	"syscall"
	"time"
)

// processCPU returns the CPU time (user and system) the process has used so
// far, all threads together: the handler goroutines', the runtime's and the
// garbage collector's.
func processCPU() (time.Duration, bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
