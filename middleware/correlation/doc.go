// Package correlation carries a correlation id from a publisher, through
// message headers, into the handler's context, for programs that do not use
// distributed tracing (package middleware/otelqueuekit does this and more
// for those that do). It imports only the standard library and the core.
//
//	// consumer
//	h = correlation.Middleware("")(h)
//	// in the handler
//	log := middleware.Logger(ctx).With(correlation.Attr(ctx))
//	out.Header = correlation.Inject(ctx, out.Header)
//
// # Concurrency
//
// Everything here is safe for concurrent use and starts no goroutines.
package correlation
