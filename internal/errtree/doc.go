// Package errtree bounds the error trees that queuekit inspects.
//
// errors.Is and errors.As walk an error's tree through Unwrap() error and
// Unwrap() []error, visiting every path: an Unwrap that returns its own
// error walks for ever, an Unwrap() []error that does recurses until the
// stack overflows (a fatal error, not a panic), and nested errors.Join(e, e)
// doubles the paths at every level. Errors come from user code (handlers,
// middleware), so before the runtime inspects one it passes it through
// Bound, which checks the tree with a bounded walk and replaces an unbounded
// one by a plain error.
package errtree
