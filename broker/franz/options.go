package franz

// The kgo options a caller may not pass in ClientOptions: those that would
// break the guarantees of a Source, a Publisher or DeadLetters, and those
// a Config field sets (the caller's would be silently overridden). kgo has
// no exported way to tell an Opt's name without building a client (which,
// with consuming or group options, starts fetching or joining), so the
// name is read from the option's function: kgo's option constructors
// return a struct holding one closure, named <constructor>.funcN (or
// <caller>.<constructor>.funcN, or <caller>.funcM.<constructor>.N, when
// inlined). An option whose name cannot be read (a form of the compiler's
// naming not foreseen here) is let through: for a Source, its own options
// are applied after the caller's and override the consuming, group and
// producing settings it relies on, so such an option has no effect there
// (as seen in review 2); for a Publisher or DeadLetters, likewise for the
// options they set.

import (
	"reflect"
	"runtime"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"
)

// kgoPkg is the package of kgo's option types.
const kgoPkg = "github.com/twmb/franz-go/pkg/kgo"

// consumingRefused are the consuming and group options: a Source sets its
// own (its topic, group, commits, rebalance callbacks), and a Publisher or
// DeadLetters must not consume or join a group.
var consumingRefused = map[string]string{
	"ConsumerGroup":          "the group is Config.GroupID",
	"ConsumeTopics":          "the topic is Config.Topic",
	"ConsumeRegex":           "the topic is Config.Topic, consumed by name",
	"ConsumePartitions":      "a Source consumes as a group member (Config.GroupID)",
	"ShareGroup":             "a Source consumes as a member of a classic consumer group (Config.GroupID), not a share group",
	"ConsumeExcludeTopics":   "the topic is Config.Topic",
	"ConsumeResetOffset":     "set Config.StartOffset",
	"ConsumeStartOffset":     "set Config.StartOffset",
	"AdjustFetchOffsetsFn":   "moving the start offsets could skip records not handled",
	"AutoCommitMarks":        "the Source commits handled records itself",
	"AutoCommitInterval":     "the Source commits handled records itself (set Config.CommitInterval)",
	"AutoCommitCallback":     "the Source commits handled records itself",
	"GreedyAutoCommit":       "the Source commits handled records itself",
	"OnPartitionsAssigned":   "the Source's rebalance callbacks drain and fence partitions (use SetEventHook to watch rebalances)",
	"OnPartitionsRevoked":    "the Source's rebalance callbacks drain and fence partitions (use SetEventHook to watch rebalances)",
	"OnPartitionsLost":       "the Source's rebalance callbacks drain and fence partitions (use SetEventHook to watch rebalances)",
	"OnOffsetsFetched":       "the Source starts from the committed offsets",
	"BlockRebalanceOnPoll":   "the Source sets it",
	"FetchIsolationLevel":    "set Config.Isolation",
	"KeepControlRecords":     "the Source sets it",
	"Balancers":              "set Config.Balancers",
	"SessionTimeout":         "set Config.SessionTimeout",
	"HeartbeatInterval":      "set Config.HeartbeatInterval",
	"RebalanceTimeout":       "set Config.RebalanceTimeout",
	"FetchMaxWait":           "set Config.MaxWait",
	"FetchMaxPartitionBytes": "set Config.MaxBytes",
	"MetadataMaxAge":         "set Config.PartitionWatchInterval",
	"MetadataMinAge":         "set Config.PartitionWatchInterval",
}

// sourceRefused are the options a Source refuses: the consuming ones, and
// those its Config sets.
var sourceRefused = merge(consumingRefused, map[string]string{
	"SeedBrokers":    "set Config.Brokers",
	"WithLogger":     "set Config.Logger",
	"ProducerLinger": "dead letters and retry records are sent at once",
	"WithContext":    "the Source owns its clients' lifetime (Close ends them); a cancelled client context would stop the Source silently",
	"GroupProtocol":  "the group uses the \"consumer\" protocol type, as kafka-go members and Kafka's tools do",
	// With Balancers[0] range or sticky on Kafka 4+, kgo.ServerSideBalancer
	// switches to a KIP-848 group: the broker assigns, and Config's
	// Balancers, SessionTimeout and HeartbeatInterval no longer apply.
	"ServerSideBalancer": "the Source runs the classic group protocol with Config.Balancers and Config's timeouts (KIP-848 groups are not supported)",
})

// refuseInstanceIDWithRetry refuses kgo.InstanceID when the Source has
// retry topics: every tier client would join its tier group with the same
// static member id as the main client (and as every other tier's), which
// static membership does not foresee.
func refuseInstanceIDWithRetry(opts []kgo.Opt) error {
	for i, o := range opts {
		if kgoOptName(o) == "InstanceID" {
			return invalid("ClientOptions[%d]: kgo.InstanceID is not allowed with RetryTopics: the tier consumers would share the main member's static id (use no RetryTopics for static membership)", i)
		}
	}
	return nil
}

// publisherRefused are the options a Publisher refuses.
var publisherRefused = merge(renamed(consumingRefused, "a Publisher does not consume or join a group"), map[string]string{
	"SeedBrokers":       "set PublisherConfig.Brokers",
	"ProducerLinger":    "set PublisherConfig.Linger",
	"RecordPartitioner": "a key goes to the partition the kafka adapter's Publisher picks",
})

// deadLettersRefused are the options DeadLetters refuses.
var deadLettersRefused = merge(renamed(consumingRefused, "DeadLetters reads and commits with clients of its own"), map[string]string{
	"SeedBrokers": "set DeadLetterConfig.Brokers",
})

func merge(a, b map[string]string) map[string]string {
	out := make(map[string]string, len(a)+len(b))
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}

// renamed returns m's names, each with the reason why.
func renamed(m map[string]string, why string) map[string]string {
	out := make(map[string]string, len(m))
	for k := range m {
		out[k] = why
	}
	return out
}

// producingRefused are the producing options that would lose the
// acknowledged, idempotent writes of dead letters, retry records and
// Publish.
var producingRefused = map[string]string{
	"TransactionalID":           "writes are not transactional (a transactional client refuses writes outside a transaction)",
	"DisableIdempotentWrite":    "writes are idempotent",
	"DefaultProduceTopicAlways": "every write goes to the topic it names (kgo would send retry copies, dead letters and published messages to the default topic)",
	"ManualFlushing":            "writes are sent at once (with manual flushing, nothing is sent until Flush, which the adapter never calls)",
	// RequiredAcks is refused only when it is not kgo.AllISRAcks().
	"RequiredAcks": "writes wait for every in-sync replica (acks=all)",
}

// checkClientOptions refuses the options of opts named in refused or in
// producingRefused with an error wrapping broker.ErrInvalidConfig naming
// the option and its index; what prefixes the message. It also refuses nil
// entries.
func checkClientOptions(what string, opts []kgo.Opt, refused map[string]string) error {
	for i, o := range opts {
		if o == nil {
			return invalid("%sClientOptions[%d] is nil", what, i)
		}
		name := kgoOptName(o)
		if name == "" {
			continue
		}
		why, ok := producingRefused[name]
		if name == "RequiredAcks" && allISRAcks(o) {
			ok = false
		}
		if w, found := refused[name]; found && !ok {
			why, ok = w, true
		}
		if ok {
			return invalid("%sClientOptions[%d]: kgo.%s is not allowed: %s", what, i, name, why)
		}
	}
	return nil
}

// kgoOptName returns the name of the kgo constructor that made o
// ("ConsumePartitions"), or "" when it cannot be told.
func kgoOptName(o kgo.Opt) string {
	v := reflect.ValueOf(o)
	if v.Kind() != reflect.Struct || v.Type().PkgPath() != kgoPkg || v.NumField() != 1 {
		return ""
	}
	f := v.Field(0)
	if f.Kind() != reflect.Func || f.IsNil() {
		return ""
	}
	fn := runtime.FuncForPC(f.Pointer())
	if fn == nil {
		return ""
	}
	parts := strings.Split(fn.Name(), ".")
	if len(parts) < 3 || !closureSuffix(parts[len(parts)-1]) {
		return ""
	}
	return parts[len(parts)-2]
}

// closureSuffix reports whether seg, the last segment of a closure's name,
// is one the compiler gives: "funcN", or "N" when the constructor was
// inlined into a func literal or a func value's call
// ("pkg.caller.func1.ConsumeRegex.1").
func closureSuffix(seg string) bool {
	seg = strings.TrimPrefix(seg, "func")
	if seg == "" {
		return false
	}
	for _, c := range seg {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// allISRAcks reports whether o, a kgo.RequiredAcks option, asks for
// kgo.AllISRAcks(). It reads the value from a client made with o alone
// (which starts nothing that connects).
func allISRAcks(o kgo.Opt) bool {
	cl, err := newClient([]kgo.Opt{kgo.DisableIdempotentWrite(), o})
	if err != nil {
		return false
	}
	defer cl.Close()
	return cl.OptValue(kgo.RequiredAcks) == kgo.AllISRAcks()
}
