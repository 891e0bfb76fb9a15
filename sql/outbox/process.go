package outbox

import (
	"os"
	"strconv"
	"strings"
)

// processIdentity names process pid (0: this one) on this machine as
// "pid=<pid> start=<start time> boot=<boot id> ns=<pid namespace>", from
// Linux's /proc: the start time tells a process from a later one that got
// its pid, the boot id tells this machine's processes from another
// machine's, or from before a reboot, and the pid namespace this
// container's from another's on the same kernel (whose pids this one cannot
// see). pid must be of this process's pid namespace. It reports false where /proc does not say (other systems), and for
// a process that is gone.
func processIdentity(pid int) (string, bool) {
	if pid == 0 {
		pid = os.Getpid()
	}
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", false
	}
	start, ok := processStart(pid)
	if !ok {
		return "", false
	}
	ns, err := os.Readlink("/proc/self/ns/pid")
	if err != nil {
		return "", false
	}
	return "pid=" + strconv.Itoa(pid) + " start=" + start + " boot=" + strings.TrimSpace(string(boot)) + " ns=" + ns, true
}

// processStart returns the start time (in clock ticks since boot) of the
// live process pid, from /proc/<pid>/stat; false when it is gone or a zombie.
func processStart(pid int) (string, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", false
	}
	// The command name, field 2, is in parentheses and may hold spaces:
	// the fields after it start behind the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return "", false
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state), f[19] field 22 (starttime).
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return "", false
	}
	return f[19], true
}

// ownerIsDead reports whether owner, a lease owner of the form
// "<random> pid=… start=… boot=… ns=…", names a process of this machine's
// current boot and of this pid namespace that is no longer running. An owner of another form, another
// machine or another boot is not known to be dead.
func ownerIsDead(owner string) bool {
	var pid int
	var start, boot, ns string
	for _, f := range strings.Fields(owner) {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			continue
		}
		switch k {
		case "pid":
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return false
			}
			pid = n
		case "start":
			start = v
		case "boot":
			boot = v
		case "ns":
			ns = v
		}
	}
	if pid == 0 || start == "" || boot == "" || ns == "" {
		return false
	}
	mine, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil || strings.TrimSpace(string(mine)) != boot {
		return false
	}
	if myNS, err := os.Readlink("/proc/self/ns/pid"); err != nil || myNS != ns {
		return false // another container's process: its pid means nothing here
	}
	now, alive := processStart(pid)
	return !alive || now != start
}
