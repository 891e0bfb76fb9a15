// Package kafkatest holds the Kafka scenario tests that queuekit's two Kafka
// adapters (broker/kafka on kafka-go, broker/franz on franz-go) share, and
// the cluster helpers they run on.
//
// The scenarios check what a consumer group adapter promises beyond the
// broker-neutral conformance suite (broker/brokertest): a member shut down
// mid-run loses and duplicates nothing, a member that vanishes has its
// partitions taken over after the session timeout, a restart resumes at the
// committed offsets, a poison record goes to the dead-letter topic and its
// partition moves on, and the ByKey and ByPartition orderings hold under
// concurrency. Each adapter's tests call RunScenarios with an Adapter that
// maps SourceConfig to its own Config; this package imports neither adapter.
//
// # Clusters
//
// NewCluster starts an in-process kfake cluster (the Kafka protocol served
// by github.com/twmb/franz-go/pkg/kfake, not Apache Kafka), one per test.
// With QUEUEKIT_KAFKA_BROKERS=host:port[,host:port] set, the scenarios run
// against that cluster instead, and those that need kfake's request control
// (fault injection, commit inspection) are skipped. QUEUEKIT_KAFKA_DEBUG=1
// sends the sources' and runtimes' logs to slog.Default.
//
// Topics are created, written (franz-go's kgo client) and inspected
// (committed offsets, end offsets, group members through kadm) without any
// adapter, so a scenario's checks do not depend on the adapter under test.
//
// # Leaks
//
// The helpers close every client they open. The calling test package
// checks for leaked goroutines with goleak.VerifyTestMain in its TestMain.
//
// The package is internal to queuekit: its API follows what the adapters'
// tests need and may change with them.
package kafkatest
