package main

import (
	"errors"
)

// openTarget opens the dead letters t names. (Stub until the adapters land.)
func openTarget(t target) (deadLetters, error) {
	return nil, errors.New("not yet")
}
