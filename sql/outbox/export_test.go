package outbox

// LeaseOwnerOfProcess returns the SQLite lease owner a relay of process pid
// (0: this process) records, and whether this system identifies processes.
func LeaseOwnerOfProcess(pid int) (string, bool) {
	id, ok := processIdentity(pid)
	if !ok {
		return "", false
	}
	return "test-relay " + id, true
}
