package errtree

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

type selfUnwrap struct{}

func (e *selfUnwrap) Error() string { return strings.Repeat("x", 1<<20) }
func (e *selfUnwrap) Unwrap() error { return e }

type panicky struct{}

func (panicky) Error() string { panic("no text") }
func (panicky) Unwrap() error { panic("no unwrap") }

func TestBound(t *testing.T) {
	chain := fmt.Errorf("a: %w", fmt.Errorf("b: %w", errors.New("c")))
	if got := Bound(chain); got != chain {
		t.Errorf("a chain: %v", got)
	}
	if n := testing.AllocsPerRun(100, func() { _ = Bound(chain) }); n != 0 {
		t.Errorf("Bound of a chain allocates %v times", n)
	}
	if got := Bound(panicky{}); got != error(panicky{}) {
		t.Errorf("a panicking Unwrap: %v", got)
	}
	nested := errors.New("leaf")
	for range MaxDepth + 1 {
		nested = errors.Join(nested, errors.New("x"))
	}
	deep := errors.New("z")
	for range 40 {
		deep = errors.Join(deep, deep)
	}
	for name, err := range map[string]error{"cycle": &selfUnwrap{}, "nested too deep": nested, "2^40 paths": deep} {
		got := Bound(err)
		var ue *UnboundedError
		if !errors.As(got, &ue) || len(ue.Text) > MaxText+len(" …") || !strings.Contains(got.Error(), "unbounded") {
			t.Errorf("%s: %T %.100q", name, got, got.Error())
		}
	}
	if got := Text(panicky{}); !strings.Contains(got, "panicked: no text") {
		t.Errorf("Text of a panicking Error: %q", got)
	}
}
