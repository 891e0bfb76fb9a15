package kafkatest

import "testing"

// A Scenario is one shared Kafka scenario test.
type Scenario struct {
	// Name reads as a sentence; it names the subtest.
	Name string
	// Run runs the scenario on a.
	Run func(t *testing.T, a Adapter)
}

// Scenarios lists the shared scenarios in the order RunScenarios runs them.
var Scenarios = []Scenario{
	{"TwoMembersOneShutDownMidRunLosesNothingAndDuplicatesNothing", TwoMembersOneShutDownMidRun},
	{"VanishedMemberPartitionsAreTakenOverAfterSessionTimeout", VanishedMember},
	{"RestartResumesAtCommittedOffsetsAndRedeliversUncommittedWork", RestartResumesAtCommittedOffsets},
	{"PoisonRecordGoesToDeadLetterTopicWithHeadersAndPartitionMovesOn", PoisonRecordGoesToDeadLetterTopic},
	{"ByKeyKeepsPerKeyOrderAndNeverCommitsPastUnfinishedWork", ByKeyKeepsPerKeyOrder},
	{"ByPartitionRunsOneRecordPerPartitionInOffsetOrder", ByPartitionRunsOneRecordPerPartition},
}

// RunScenarios runs every scenario on a as a parallel subtest of t; each
// has a cluster of its own (NewCluster).
func RunScenarios(t *testing.T, a Adapter) {
	t.Helper()
	if a.NewSource == nil || a.ErrRebalance == nil || a.ErrCommitTimedOut == nil {
		t.Fatalf("kafkatest.Adapter %q needs NewSource, ErrRebalance and ErrCommitTimedOut", a.Name)
	}
	for _, s := range Scenarios {
		t.Run(s.Name, func(t *testing.T) {
			t.Parallel()
			s.Run(t, a)
		})
	}
}
