// Package otel is a placeholder.
package otel

import _ "go.opentelemetry.io/otel"
import _ "go.opentelemetry.io/otel/propagation"
import _ "go.opentelemetry.io/otel/trace"
import _ "go.opentelemetry.io/otel/sdk/trace"
import _ "go.opentelemetry.io/otel/sdk/trace/tracetest"
