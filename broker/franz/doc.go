// Package franz is queuekit's second Kafka adapter, on franz-go's kgo.Client.
package franz
