package inbox

import "context"

// SetBusyHook makes i call f whenever a Lease-mode key is found busy.
func SetBusyHook(i *Inbox, f func()) { i.onBusy = f }

// SetCleanBatch sets the rows i deletes per Clean statement.
func SetCleanBatch(i *Inbox, n int) { i.batch = n }

// Reserve reserves key for token as a Lease-mode worker does before its
// handler runs, and reports whether it got it. A test that never confirms
// nor renews it stands for a worker that crashed.
func Reserve(ctx context.Context, i *Inbox, key, token string) (bool, error) {
	st, err := i.reserve(ctx, key, token)
	return st.reserved, err
}
