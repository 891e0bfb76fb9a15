package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Issue 9 item 13: at every shutdown a few requests in flight on keep-alive
// connections got EOF or a reset instead of an answer (the server closed
// connections clients were sending on), and with the default
// -shutdown-delay 0 readiness and refusal flipped at the same instant, so a
// load balancer had no time to notice.
//
// Here 16 clients with keep-alive connections post orders as fast as they
// can; a load balancer polls /readyz every 100 ms. After SIGTERM a client
// stops once the load balancer saw the service not ready or once it was told
// 503: until then, every request it sends must get an HTTP answer (202 or
// 503), never a transport error. Locally (shutdown delay 0) and under an
// orchestrator (KUBERNETES_SERVICE_HOST set: the default delay lets the
// load balancer notice before intake closes).
func TestEndToEndSIGTERMUnderKeepAliveLoadAnswersEveryRequest(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the service: skipped with -short")
	}
	for _, tc := range []struct {
		name string
		env  []string
		// under an orchestrator, the load balancer must see readiness
		// off while orders are still accepted
		wantWarning bool
	}{
		{"locally", nil, false},
		{"under Kubernetes", []string{"KUBERNETES_SERVICE_HOST=10.0.0.1"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startServiceEnv(t, tc.env, "-process-time", "1ms", "-drain-timeout", e2eDrain.String())
			p.waitReady(&http.Client{Timeout: 2 * time.Second})

			var (
				lbOut     = make(chan struct{}) // the load balancer took the service out
				lbOutAt   atomic.Int64          // when (unix ns)
				signalled atomic.Bool
				accepted  atomic.Int64
				mu        sync.Mutex
				answers   = map[string]int{} // after SIGTERM: "202", "503", or the transport error
				lost      []string
				wg        sync.WaitGroup
			)
			// The load balancer: a keep-alive client polling /readyz. An
			// error or a non-200 answer takes the service out.
			wg.Go(func() {
				cl := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{}}
				defer cl.CloseIdleConnections()
				for {
					resp, err := cl.Get(p.base + "/readyz")
					ok := err == nil && resp.StatusCode == http.StatusOK
					if err == nil {
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
					if !ok {
						lbOutAt.Store(time.Now().UnixNano())
						close(lbOut)
						return
					}
					time.Sleep(100 * time.Millisecond)
				}
			})
			for c := range 16 {
				wg.Go(func() {
					cl := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
					defer cl.CloseIdleConnections()
					for i := 0; ; i++ {
						select {
						case <-lbOut:
							return
						default:
						}
						after := signalled.Load()
						body := fmt.Sprintf(`{"item": "book-%d-%d", "quantity": 1}`, c, i)
						resp, err := cl.Post(p.base+"/orders", "application/json", strings.NewReader(body))
						if err != nil {
							mu.Lock()
							lost = append(lost, err.Error())
							answers["error"]++
							mu.Unlock()
							return
						}
						var out struct{ ID string }
						_ = json.NewDecoder(resp.Body).Decode(&out)
						resp.Body.Close()
						switch resp.StatusCode {
						case http.StatusAccepted:
							accepted.Add(1)
						case http.StatusServiceUnavailable:
						default:
							t.Errorf("POST /orders = %d; want 202 or, shutting down, 503", resp.StatusCode)
						}
						if after || signalled.Load() {
							mu.Lock()
							answers[fmt.Sprint(resp.StatusCode)]++
							mu.Unlock()
						}
						if resp.StatusCode == http.StatusServiceUnavailable {
							return // told to go away: a client leaves
						}
						// A client thinks a little between orders: its
						// keep-alive connection sits idle meanwhile.
						time.Sleep(time.Duration(i%4) * time.Millisecond)
					}
				})
			}
			deadline := time.Now().Add(60 * time.Second)
			for accepted.Load() < 500 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			sent := time.Now()
			signalled.Store(true)
			if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			wg.Wait()
			var straggler struct {
				code  int
				close bool
				err   error
			}
			if tc.wantWarning {
				cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{}}
				resp, err := cl.Post(p.base+"/orders", "application/json", strings.NewReader(`{"item": "late", "quantity": 1}`))
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					straggler.code, straggler.close = resp.StatusCode, resp.Close
				}
				straggler.err = err
				cl.CloseIdleConnections()
			}
			select {
			case <-p.exited:
			case <-time.After(60 * time.Second):
				t.Fatalf("service still running 60 s after SIGTERM\n%s", p.tail())
			}
			if p.exitErr != nil {
				t.Errorf("service exit after SIGTERM: %v; want 0\n%s", p.exitErr, p.tail())
			}
			noticed := time.Duration(lbOutAt.Load() - sent.UnixNano())
			t.Logf("accepted %d before and after SIGTERM; answers after SIGTERM %v; the load balancer saw the service not ready %v after SIGTERM; exit after %v",
				accepted.Load(), answers, noticed.Round(time.Millisecond), time.Since(sent).Round(time.Millisecond))
			if len(lost) > 0 {
				t.Errorf("%d requests got no HTTP answer after SIGTERM (want 0), e.g. %q", len(lost), lost[0])
			}
			if tc.wantWarning {
				// A request the load balancer routed just before it
				// noticed is still accepted, and told to close its
				// connection.
				if code, close := straggler.code, straggler.close; code != http.StatusAccepted || !close {
					t.Errorf("POST /orders once the load balancer saw readiness off = %d (%v), Connection: close %v; want 202 with Connection: close: readiness must go off before intake closes",
						code, straggler.err, close)
				}
			}
		})
	}
}
