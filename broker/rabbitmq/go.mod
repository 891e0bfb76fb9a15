module github.com/queuekit/queuekit/broker/rabbitmq

go 1.26.0

require (
	github.com/queuekit/queuekit v0.0.0
	github.com/rabbitmq/amqp091-go v1.16.0
	go.uber.org/goleak v1.3.0
)

require (
	github.com/cenkalti/backoff/v4 v4.3.0 // indirect
	go.yaml.in/yaml/v3 v3.0.5 // indirect
)

replace github.com/queuekit/queuekit => ../..
