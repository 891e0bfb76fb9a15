package broker

import (
	"context"
	"time"
)

// A BatchReceiver is a Source that can hand out several deliveries in one
// call. The runtime uses it, when a source has it, to collect the batches of
// a batch consumer (consumer.NewBatch); everything else goes through
// Receive. A source whose Receive hands out one delivery of an ordered lane
// at a time (a Kafka partition, or a key) needs it for batches to hold more
// than one delivery per lane.
//
// ReceiveBatch blocks until at least one delivery is available or ctx is
// done (then it returns ctx's error, or an error wrapping it, and no
// delivery). Once it has one, it collects more, up to max, for at most
// wait (0: only what it has ready), and returns them. When ctx ends, the
// source closes or the source cannot go on collecting (a rebalance, a
// pause) while it has deliveries, it returns them at once with a nil error:
// the caller gives them back when it no longer wants them. Its other errors
// are those of Receive. It must be safe for concurrent use, with itself and
// with Receive.
//
// Deliveries of one lane (see Sequenced) come in the order they must be
// handled in. Whoever settles them must keep that order: once a delivery of
// a lane failed (it is requeued or dead-lettered), the later deliveries of
// the same lane in the batch must be given back unhandled (Releaser), not
// acknowledged, so that they come again after the failed one. The source
// must accept the settlements of a batch in any order.
type BatchReceiver interface {
	ReceiveBatch(ctx context.Context, max int, wait time.Duration) ([]Delivery, error)
}

// A Sequenced delivery belongs to an ordered lane of its source (a Kafka
// partition, or one key of it): deliveries with the same Lane must be
// handled in the order the source handed them out. Two lanes may share a
// value (a hash collision); that only makes the runtime more careful (it
// gives back more of a batch after a failure), never less.
type Sequenced interface {
	Lane() uint64
}
