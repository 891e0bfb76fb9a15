package inbox_test

import (
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
			os.Stderr.WriteString("goleak: " + err.Error() + "\n")
			code = 1
		}
	}
	os.Exit(code)
}
