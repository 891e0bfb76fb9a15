package sqlqueue_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/sql/sqldb"
	"github.com/queuekit/queuekit/sql/sqlqueue"
)

// stallProxy forwards TCP to the PostgreSQL server; while stalled it
// forwards nothing, as a network partition would.
type stallProxy struct {
	ln      net.Listener
	stalled atomic.Bool
	mu      sync.Mutex
	conns   []net.Conn
	wg      sync.WaitGroup
}

func newStallProxy(t *testing.T, target string) *stallProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{ln: ln}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			p.wg.Add(2)
			go p.pipe(c, u)
			go p.pipe(u, c)
		}
	}()
	t.Cleanup(func() {
		p.stalled.Store(false)
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *stallProxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		for p.stalled.Load() {
			time.Sleep(5 * time.Millisecond)
		}
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				return
			}
			return
		}
	}
}

// Issue 12 review R3 #1: a delivery's Lease context ended only after the
// next successful renewal, so while the database was unreachable another
// source took the row and two handlers ran at once. The Lease context must
// have ended (cause broker.ErrStaleDelivery) by the time another source can
// claim the row, renewals failing or not.
func TestIssue12ReviewR3_1_LeaseEndsWhileDatabaseUnreachable(t *testing.T) {
	pgURL := dsn(t, sqldb.Postgres)
	direct := open(t, pgURL)
	ctx := context.Background()
	if err := sqlqueue.Migrate(ctx, direct, ""); err != nil {
		t.Fatal(err)
	}
	publish(t, direct, "fence", "only")
	u, err := url.Parse(pgURL)
	if err != nil {
		t.Fatal(err)
	}
	px := newStallProxy(t, u.Host)
	u.Host = px.ln.Addr().String()
	viaProxy := open(t, u.String())
	const vis = time.Second
	a := newSource(t, viaProxy, sqlqueue.Config{Queue: "fence", Visibility: vis, PollInterval: 50 * time.Millisecond})
	b := newSource(t, direct, sqlqueue.Config{Queue: "fence", Visibility: vis, PollInterval: 50 * time.Millisecond})
	da := receive(t, a)
	px.stalled.Store(true)
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	db, err := b.Receive(rctx)
	cancel()
	if err != nil {
		t.Fatalf("the other source never got the row whose lease ran out: %v", err)
	}
	lease := da.(broker.Leased).Lease()
	if lease.Err() == nil {
		t.Errorf("another source holds the row (Attempt %d) while the first delivery's Lease context is live: two handlers at once", db.Message().Attempt)
	} else if c := context.Cause(lease); !errors.Is(c, broker.ErrStaleDelivery) {
		t.Errorf("cause of the ended Lease context = %v; want broker.ErrStaleDelivery", c)
	}
	if err := db.Ack(ctx); err != nil {
		t.Errorf("Ack by the new holder = %v", err)
	}
	px.stalled.Store(false)
	if err := da.Ack(ctx); !errors.Is(err, broker.ErrStaleDelivery) {
		t.Errorf("Ack of the fenced delivery = %v; want broker.ErrStaleDelivery", err)
	}
}

// Issue 12 review R3 #1: Visibility under 1s is refused (renewals that open
// a connection under load took longer than the old 30ms minimum).
func TestIssue12ReviewR3_1_MinimumVisibility(t *testing.T) {
	db := open(t, "sqlite:"+t.TempDir()+"/q.db")
	_, err := sqlqueue.NewSource(db, sqlqueue.Config{Queue: "q", Visibility: 300 * time.Millisecond})
	if !errors.Is(err, broker.ErrInvalidConfig) {
		t.Errorf("NewSource with Visibility 300ms = %v; want broker.ErrInvalidConfig", err)
	}
}

// Issue 12 review R3 #2: List loaded whole bodies, 500 rows a statement,
// whatever Limit and BodyLimit said. List(Limit 1) of 1 MiB dead letters
// must allocate about one preview, not the bodies.
func TestIssue12ReviewR3_2_DeadLetterListMemory(t *testing.T) {
	eachDialect(t, func(t *testing.T, d sqldb.Dialect) {
		db := open(t, dsn(t, d))
		ctx := context.Background()
		if err := sqlqueue.Migrate(ctx, db, ""); err != nil {
			t.Fatal(err)
		}
		const n, size = 10, 1 << 20
		// The dead letters are made in the database: 1 MiB of "é" each.
		body := "decode(repeat('c3a9', $1), 'hex')"
		if d == sqldb.SQLite {
			body = "CAST(replace(hex(zeroblob($1)), '00', 'é') AS BLOB)"
		}
		ins := "INSERT INTO " + sqlqueue.DeadLetterTable(sqlqueue.DefaultTable) +
			" (queue, msg_id, msg_key, headers, body, created_at, dead_at, attempts) VALUES ('mem', 'm', NULL, '{}', " + body + ", 0, 0, 1)"
		for range n {
			if _, err := db.ExecContext(ctx, ins, size/2); err != nil {
				t.Fatal(err)
			}
		}
		src := newSource(t, db, sqlqueue.Config{Queue: "mem"})
		dl := src.DeadLetters()
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		page, err := dl.List(ctx, broker.DeadLetterQuery{Limit: 1, BodyLimit: 5})
		runtime.ReadMemStats(&after)
		if err != nil {
			t.Fatal(err)
		}
		if got := after.TotalAlloc - before.TotalAlloc; got > 3<<20 {
			t.Errorf("List(Limit 1, BodyLimit 5) of %d dead letters of 1 MiB allocated %d MiB; want well under one body", n, got>>20)
		}
		if len(page.Items) != 1 || page.Next == "" {
			t.Fatalf("List(Limit 1) = %d items, Next %q; want 1 and a cursor", len(page.Items), page.Next)
		}
		it := page.Items[0]
		// 5 bytes cut at a rune boundary: two "é".
		if string(it.Message.Body) != "éé" || it.BodySize != size {
			t.Errorf("item body %q, BodySize %d; want %q, %d", it.Message.Body, it.BodySize, "éé", size)
		}
		runtime.ReadMemStats(&before)
		page, err = dl.List(ctx, broker.DeadLetterQuery{Limit: 1, DeadLetterFilter: broker.DeadLetterFilter{Reason: "nomatch"}})
		runtime.ReadMemStats(&after)
		if err != nil || len(page.Items) != 0 {
			t.Fatalf("List(no match) = %d items, %v", len(page.Items), err)
		}
		if got := after.TotalAlloc - before.TotalAlloc; got > 3<<20 {
			t.Errorf("List matching nothing allocated %d MiB; want no bodies read", got>>20)
		}
		// The whole body, when asked for.
		page, err = dl.List(ctx, broker.DeadLetterQuery{Limit: 2, BodyLimit: -1})
		if err != nil || len(page.Items) != 2 || len(page.Items[1].Message.Body) != size || page.Items[1].BodySize != size {
			t.Fatalf("List(BodyLimit -1) = %d items, %v", len(page.Items), err)
		}
	})
}

// Issue 12 review R3 #3: header keys and values that are not valid UTF-8
// were silently changed by the JSON encoding. Publish and PublishTx refuse
// them, naming the header; the message ID likewise (review R3 LOW), which
// PostgreSQL refused with a raw error and SQLite stored.
func TestIssue12ReviewR3_3_HeadersNotSilentlyChanged(t *testing.T) {
	eachDialect(t, func(t *testing.T, d sqldb.Dialect) {
		db := open(t, dsn(t, d))
		ctx := context.Background()
		if err := sqlqueue.Migrate(ctx, db, ""); err != nil {
			t.Fatal(err)
		}
		p, err := sqlqueue.NewPublisher(db, sqlqueue.PublisherConfig{})
		if err != nil {
			t.Fatal(err)
		}
		bad := []*broker.Message{
			{ID: "value", Header: map[string]string{"k": "\xff\xfe"}},
			{ID: "key", Header: map[string]string{"\xc3": "x"}},
			{ID: "id\xff"},
			{ID: "id\x00nul"},
		}
		for _, m := range bad {
			err := p.Publish(ctx, "odd", &broker.Message{ID: "fine"}, m)
			if !errors.Is(err, broker.ErrInvalidConfig) {
				t.Errorf("Publish of message %q = %v; want broker.ErrInvalidConfig", m.ID, err)
			}
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := p.PublishTx(ctx, tx, "odd", m); !errors.Is(err, broker.ErrInvalidConfig) {
				t.Errorf("PublishTx of message %q = %v; want broker.ErrInvalidConfig", m.ID, err)
			}
			tx.Rollback()
		}
		if err := p.Publish(ctx, "odd", &broker.Message{ID: "x", Header: map[string]string{"k": "\xff"}}); err == nil || !strings.Contains(err.Error(), `"k"`) {
			t.Errorf("error %v does not name the header", err)
		}
		// What is accepted comes back byte for byte; an empty Key is
		// no key (nil) on both databases (review R3 LOW).
		good := &broker.Message{ID: "good ☃", Key: []byte{}, Header: map[string]string{"a\x00b": "v\x00w", "☃": "\"\\"}}
		if err := p.Publish(ctx, "odd", good); err != nil {
			t.Fatal(err)
		}
		src := newSource(t, db, sqlqueue.Config{Queue: "odd"})
		dl := receive(t, src)
		m := dl.Message()
		if m.ID != good.ID || m.Key != nil || len(m.Header) != 2 || m.Header["a\x00b"] != "v\x00w" || m.Header["☃"] != "\"\\" {
			t.Errorf("received id %q key %v (nil %v) header %q; want %q, nil, %q", m.ID, m.Key, m.Key == nil, m.Header, good.ID, good.Header)
		}
		if err := dl.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

// Issue 12 review R3 (LOW): Pause with a done ctx left the buffered rows
// leased, costing each a delivery; they go back uncounted on a context of
// Pause's own.
func TestIssue12ReviewR3_Low_PauseWithDoneContext(t *testing.T) {
	eachDialect(t, func(t *testing.T, d sqldb.Dialect) {
		db := open(t, dsn(t, d))
		ctx := context.Background()
		if err := sqlqueue.Migrate(ctx, db, ""); err != nil {
			t.Fatal(err)
		}
		publish(t, db, "p", "0", "1", "2", "3")
		src := newSource(t, db, sqlqueue.Config{Queue: "p", Prefetch: 4, Visibility: time.Second})
		first := receive(t, src) // the other three in the buffer
		done, cancel := context.WithCancel(ctx)
		cancel()
		if err := src.Pause(done); err != nil {
			t.Errorf("Pause(done ctx) = %v; want the rows given back", err)
		}
		if err := src.Resume(ctx); err != nil {
			t.Fatal(err)
		}
		if err := first.Ack(ctx); err != nil {
			t.Fatal(err)
		}
		for range 3 {
			dl := receive(t, src)
			if a := dl.Message().Attempt; a != 1 {
				t.Errorf("message %q after Pause(done ctx): Attempt %d; want 1 (given back uncounted)", dl.Message().Body, a)
			}
			if err := dl.Ack(ctx); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// Issue 12 review R3 (LOW): a missing table returned by Receive was not
// marked broker.Fatal, though restarting cannot fix it.
func TestIssue12ReviewR3_Low_MissingTableFatal(t *testing.T) {
	eachDialect(t, func(t *testing.T, d sqldb.Dialect) {
		db := open(t, dsn(t, d))
		src := newSource(t, db, sqlqueue.Config{Table: "nosuch", Queue: "q"})
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := src.Receive(ctx)
		if !broker.IsFatal(err) || !strings.Contains(err.Error(), "nosuch") {
			t.Errorf("Receive from a missing table = %v (fatal %v); want a broker.Fatal error naming the table", err, broker.IsFatal(err))
		}
	})
}

// Issue 12 review R3 (LOW): Close returned nil after its ctx ended while a
// claim was stalled on the database (broker.Source: an error wrapping
// ctx's).
func TestIssue12ReviewR3_Low_CloseWhileClaimStalled(t *testing.T) {
	pgURL := dsn(t, sqldb.Postgres)
	direct := open(t, pgURL)
	ctx := context.Background()
	if err := sqlqueue.Migrate(ctx, direct, ""); err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(pgURL)
	if err != nil {
		t.Fatal(err)
	}
	px := newStallProxy(t, u.Host)
	u.Host = px.ln.Addr().String()
	viaProxy := open(t, u.String())
	src, err := sqlqueue.NewSource(viaProxy, sqlqueue.Config{Queue: "stall", Prefetch: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := src.DeclareTopology(ctx); err != nil { // a pooled connection
		t.Fatal(err)
	}
	px.stalled.Store(true)
	received := make(chan error, 1)
	go func() {
		_, err := src.Receive(ctx) // its claim stalls
		received <- err
	}()
	time.Sleep(200 * time.Millisecond) // for the claim to be sent
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if err := src.Close(cctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close whose ctx ended while a claim was stalled = %v; want an error wrapping context.DeadlineExceeded", err)
	}
	px.stalled.Store(false)
	if err := <-received; !errors.Is(err, broker.ErrSourceClosed) {
		t.Errorf("Receive = %v; want broker.ErrSourceClosed", err)
	}
}

// Issue 12 review R3 (LOW): two redrives at once by filter reported the
// dead letters the other one took as Missing; only ids asked for are.
func TestIssue12ReviewR3_Low_ConcurrentRedriveByFilter(t *testing.T) {
	eachDialect(t, func(t *testing.T, d sqldb.Dialect) {
		db := open(t, dsn(t, d))
		ctx := context.Background()
		if err := sqlqueue.Migrate(ctx, db, ""); err != nil {
			t.Fatal(err)
		}
		const n = 60
		bodies := make([]string, n)
		for i := range bodies {
			bodies[i] = strconv.Itoa(i)
		}
		publish(t, db, "rd", bodies...)
		src := newSource(t, db, sqlqueue.Config{Queue: "rd", Prefetch: n})
		for range n {
			if err := receive(t, src).DeadLetter(ctx, broker.Reason{Err: "boom"}); err != nil {
				t.Fatal(err)
			}
		}
		dl := src.DeadLetters()
		var (
			wg   sync.WaitGroup
			res  [2]broker.DeadLetterResult
			errs [2]error
		)
		for i := range res {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res[i], errs[i] = dl.Redrive(ctx, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{})
			}()
		}
		wg.Wait()
		done := len(res[0].Done) + len(res[1].Done)
		if done != n || len(res[0].Missing)+len(res[1].Missing) != 0 || errs[0] != nil || errs[1] != nil {
			t.Errorf("two redrives of All: done %d+%d, missing %v %v, errors %v %v; want %d done, none missing", len(res[0].Done), len(res[1].Done), res[0].Missing, res[1].Missing, errs[0], errs[1], n)
		}
	})
}

// Issue 12 review R5: a claim slowed past 0.9×Visibility (here by a LOCK
// TABLE another connection holds for 1.5×Visibility) returns rows whose fence
// already passed. They must not leak: every message is still delivered and
// acked exactly once, by this source or another, no row stays leased, and
// the slowed source's Receive is not stuck on lost prefetch slots.
func TestIssue12ReviewR5_ClaimSlowedPastFence(t *testing.T) {
	pgURL := dsn(t, sqldb.Postgres)
	db := open(t, pgURL)
	ctx := context.Background()
	if err := sqlqueue.Migrate(ctx, db, ""); err != nil {
		t.Fatal(err)
	}
	const n = 8
	bodies := make([]string, n)
	for i := range bodies {
		bodies[i] = "m" + strconv.Itoa(i)
	}
	publish(t, db, "slow", bodies...)
	cfg := sqlqueue.Config{Queue: "slow", Prefetch: n, Visibility: time.Second, PollInterval: 50 * time.Millisecond}
	a := newSource(t, db, cfg)
	if err := a.DeclareTopology(ctx); err != nil {
		t.Fatal(err)
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec("LOCK TABLE " + sqlqueue.DefaultTable + " IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	unlock := time.AfterFunc(1500*time.Millisecond, func() { tx.Commit() })
	defer unlock.Stop()
	b := newSource(t, db, cfg)

	var (
		mu    sync.Mutex
		acked = map[string]int{}
	)
	done := make(chan struct{})
	var wg sync.WaitGroup
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for _, src := range []*sqlqueue.Source{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				d, err := src.Receive(rctx)
				if err != nil {
					return
				}
				if d.Ack(ctx) == nil {
					mu.Lock()
					acked[string(d.Message().Body)]++
					if len(acked) == n {
						select {
						case <-done:
						default:
							close(done)
						}
					}
					mu.Unlock()
				}
			}
		}()
	}
	select {
	case <-done:
	case <-rctx.Done():
	}
	cancel()
	wg.Wait()
	mu.Lock()
	for _, body := range bodies {
		if acked[body] != 1 {
			t.Errorf("message %s acked %d times; want exactly once", body, acked[body])
		}
	}
	mu.Unlock()
	var left int
	if err := db.QueryRow("SELECT count(*) FROM " + sqlqueue.DefaultTable + " WHERE queue = 'slow'").Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("%d rows left in the queue (leased forever by stale deliveries)", left)
	}
	// No prefetch slot was lost: each source holds Prefetch deliveries at
	// once.
	publish(t, db, "slow", append(bodies, bodies...)...)
	errs := make(chan error, 2)
	for _, src := range []*sqlqueue.Source{a, b} {
		go func() {
			held := make([]broker.Delivery, 0, n)
			defer func() {
				for _, d := range held {
					d.Ack(ctx)
				}
			}()
			for range n {
				rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				d, err := src.Receive(rctx)
				cancel()
				if err != nil {
					errs <- fmt.Errorf("Receive with %d deliveries held, Prefetch %d = %w: prefetch slots were lost to stale deliveries", len(held), n, err)
					return
				}
				held = append(held, d)
			}
			errs <- nil
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
