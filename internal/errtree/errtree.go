package errtree

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"unicode/utf8"
)

// MaxNodes bounds the errors (paths, as errors.Is visits them) of a tree;
// MaxDepth bounds how deeply Unwrap() []error nodes nest on a path (the
// recursion depth of errors.Is). consumer's batch walk uses MaxNodes too.
const (
	MaxNodes = 1 << 17
	MaxDepth = 1 << 10
)

// MaxText bounds the text of the error Bound returns for an unbounded tree:
// with its explanation it fits a dead letter's reason (consumer.MaxReasonBytes).
const MaxText = 2048

// Bounded reports whether err's tree, walked as errors.Is and errors.As
// walk it, holds at most MaxNodes paths nested at most MaxDepth deep. A
// single chain of Unwrap() error costs one type assertion and one call per
// error, and no allocation. An Unwrap that panics stops the walk: Bounded
// reports true (an inspection panics at the same place, and the runtime
// guards its inspections with recover).
func Bounded(err error) (ok bool) {
	if err == nil {
		return true
	}
	defer func() {
		if recover() != nil {
			ok = true
		}
	}()
	nodes := 0
	return walk(err, &nodes, 0)
}

func walk(err error, nodes *int, depth int) bool {
	for err != nil {
		if *nodes++; *nodes > MaxNodes {
			return false
		}
		switch e := err.(type) {
		case interface{ Unwrap() error }:
			err = e.Unwrap()
		case interface{ Unwrap() []error }:
			if depth >= MaxDepth {
				return false
			}
			for _, inner := range e.Unwrap() {
				if !walk(inner, nodes, depth+1) {
					return false
				}
			}
			return true
		default:
			return true
		}
	}
	return true
}

// Bound returns err when Bounded(err), else an *UnboundedError that keeps
// err's text (at most MaxText bytes, taken panic-safely) and does not
// unwrap: retry.IsPermanent, retry.RetryAfter and errors.Is see an ordinary
// (retryable) failure.
func Bound(err error) error {
	if Bounded(err) {
		return err
	}
	return &UnboundedError{Text: Text(err), Type: fmt.Sprintf("%T", err)}
}

// UnboundedError replaces an error whose tree Bounded rejects.
type UnboundedError struct {
	// Text is the original error's text, bounded (see Text).
	Text string
	// Type is the original error's dynamic type.
	Type string
}

// Error returns the original text and says why it stands alone.
func (e *UnboundedError) Error() string {
	return fmt.Sprintf("%s (queuekit: the %s error's Unwrap chain is unbounded, a cycle or more than %d errors: treated as an ordinary failure)", e.Text, e.Type, MaxNodes)
}

// joinType is the type errors.Join returns, whose Error method concatenates
// the texts of its errors: on nested joins of one error, exponentially many.
var joinType = reflect.TypeOf(errors.Join(errors.New("")))

// Text returns err.Error() cut to at most MaxText bytes (at a UTF-8
// boundary), or a text saying the Error method panicked. The texts of an
// errors.Join are gathered here, within the bound, rather than by its Error
// method, which would build the whole text first.
func Text(err error) string {
	var b strings.Builder
	nodes := 0
	text(&b, err, &nodes)
	s := b.String()
	if len(s) > MaxText {
		cut := MaxText
		for i := 0; i < utf8.UTFMax-1 && cut > 0 && !utf8.RuneStart(s[cut]); i++ {
			cut--
		}
		s = s[:cut] + " …"
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

func text(b *strings.Builder, err error, nodes *int) {
	if b.Len() > MaxText {
		return
	}
	if *nodes++; *nodes > MaxNodes {
		return
	}
	if reflect.TypeOf(err) == joinType {
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			errs := guarded(func() []error { return j.Unwrap() })
			for i, e := range errs {
				if b.Len() > MaxText {
					return
				}
				if i > 0 {
					b.WriteByte('\n')
				}
				text(b, e, nodes)
			}
			return
		}
	}
	s := describe(err)
	b.WriteString(s[:min(len(s), MaxText+1-b.Len())])
}

func guarded[T any](f func() T) (v T) {
	defer func() { _ = recover() }()
	return f()
}

// describe is err.Error(), or a text saying that it panicked.
func describe(err error) (s string) {
	defer func() {
		if p := recover(); p != nil {
			s = fmt.Sprintf("(the Error method of %T panicked: %v)", err, p)
		}
	}()
	return err.Error()
}
