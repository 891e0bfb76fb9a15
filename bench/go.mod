module github.com/queuekit/queuekit/bench

go 1.26.0

require (
	github.com/queuekit/queuekit v0.0.0
	github.com/queuekit/queuekit/broker/franz v0.0.0
	github.com/queuekit/queuekit/broker/kafka v0.0.0
	github.com/queuekit/queuekit/broker/rabbitmq v0.0.0
	github.com/queuekit/queuekit/sql v0.0.0
	github.com/rabbitmq/amqp091-go v1.16.0
	github.com/twmb/franz-go v1.22.3
	github.com/twmb/franz-go/pkg/kadm v1.20.0
	github.com/twmb/franz-go/pkg/kfake v0.0.0-20260918054303-01f206a7e32c
	go.uber.org/goleak v1.3.0
)

require (
	github.com/cenkalti/backoff/v4 v4.3.0 // indirect
	github.com/dustin/go-humanize v1.1.0 // indirect
	github.com/google/uuid v1.6.0 // indirect
	github.com/jackc/pgpassfile v1.0.0 // indirect
	github.com/jackc/pgservicefile v0.0.0-20240606120523-5a60cdf6a761 // indirect
	github.com/jackc/pgx/v5 v5.13.0 // indirect
	github.com/jackc/puddle/v2 v2.2.3 // indirect
	github.com/klauspost/compress v1.20.3 // indirect
	github.com/mattn/go-isatty v0.0.24 // indirect
	github.com/ncruces/go-strftime v1.1.0 // indirect
	github.com/pierrec/lz4/v4 v4.1.33 // indirect
	github.com/remyoudompheng/bigfft v0.0.0-20230129092748-24d4a6f8daec // indirect
	github.com/segmentio/kafka-go v0.4.51 // indirect
	github.com/twmb/franz-go/pkg/kmsg v1.15.1 // indirect
	golang.org/x/sync v0.24.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
	golang.org/x/text v0.41.0 // indirect
	modernc.org/libc v1.80.1 // indirect
	modernc.org/mathutil v1.7.1 // indirect
	modernc.org/memory v1.12.1 // indirect
	modernc.org/sqlite v1.62.0 // indirect
)

replace (
	github.com/queuekit/queuekit => ../
	github.com/queuekit/queuekit/broker/franz => ../broker/franz
	github.com/queuekit/queuekit/broker/kafka => ../broker/kafka
	github.com/queuekit/queuekit/broker/rabbitmq => ../broker/rabbitmq
	github.com/queuekit/queuekit/internal/kafkatest => ../internal/kafkatest
	github.com/queuekit/queuekit/sql => ../sql
)
