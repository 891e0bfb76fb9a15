package main

import "testing"

// The quick start runs to completion on the in-memory broker.
func TestQuickstartRuns(t *testing.T) {
	if err := run(); err != nil {
		t.Fatalf("run = %v", err)
	}
}
