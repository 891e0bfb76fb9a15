// Package prometheus is a placeholder.
package prometheus

import _ "github.com/prometheus/client_golang/prometheus"
import _ "github.com/prometheus/client_golang/prometheus/testutil"
