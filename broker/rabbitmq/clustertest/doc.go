// Package clustertest holds the RabbitMQ adapter's failover tests on a
// cluster of three nodes (.ci/rabbitmq-cluster): a node stopped or killed
// under a consumer and a publisher. It has no code of its own; the tests are
// in a package of their own so that go test runs them beside the adapter's
// other tests instead of after them (they spend most of their time waiting
// for nodes to stop and start).
//
// They run when QUEUEKIT_RABBITMQ_CLUSTER names the cluster's URLs (the line
// `.ci/rabbitmq-cluster start` prints); without it they skip, and under
// QUEUEKIT_REQUIRE_BROKERS=1 (CI) they fail.
package clustertest
