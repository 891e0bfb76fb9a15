package outbox_test

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/queuekit/queuekit/sql/internal/sqltest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	sqltest.PrintSkipSummary()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak: leaked goroutines:", err)
			code = 1
		}
	}
	os.Exit(code)
}
