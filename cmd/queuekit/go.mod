module github.com/queuekit/queuekit/cmd/queuekit

go 1.26.0

require (
	github.com/queuekit/queuekit v0.0.0-20261205182819-0d50511d578d
	github.com/queuekit/queuekit/broker/kafka v0.0.0-20261205182819-0d50511d578d
	github.com/queuekit/queuekit/broker/rabbitmq v0.0.0-20261205182819-0d50511d578d
	github.com/rabbitmq/amqp091-go v1.16.0
	github.com/segmentio/kafka-go v0.4.51
	github.com/twmb/franz-go v1.22.2
	github.com/twmb/franz-go/pkg/kfake v0.0.0-20260918054303-01f206a7e32c
	go.uber.org/goleak v1.3.0
)

require (
	github.com/klauspost/compress v1.20.3 // indirect
	github.com/pierrec/lz4/v4 v4.1.33 // indirect
)
