// Package admin is an operator's web page and JSON API for the consumers of
// a consumer.Supervisor: what each is doing (state, in-flight handlers,
// handled and failed per second, the backlog at the broker, restarts and
// the last error), its dead letters with the reason each failed, and the
// buttons that fix things: pause and resume a consumer, redrive (send back
// for another try) or purge dead letters, each after a confirmation page
// that shows what a dry run found.
//
// It is one http.Handler, server-rendered with html/template, with no
// JavaScript and no external assets, so it works wherever the embedding
// program serves HTTP:
//
//	h, err := admin.New(admin.Config{Supervisor: sup, Authorize: checkOperator})
//	mux.Handle("/admin/", http.StripPrefix("/admin", h)) // net/http
//	router.Any("/admin/*any", gin.WrapH(h))              // Gin
//
// The handler links its pages relatively, so it may be mounted at any path.
// Under http.StripPrefix (as above) it serves its routes exactly;
// mounted without it, set Config.Prefix to the mount path (e.g. "/admin")
// for the same, or it finds its routes from the end of the request path
// and accepts any prefix.
//
// # Pages
//
//	GET  ./                        every consumer; pause and resume buttons
//	GET  ./runner?runner=NAME      its dead letters: reason, source, attempts, body preview;
//	                               filter by reason text (reason=), next page (cursor=)
//	POST ./confirm                 what a redrive or purge of the selected (or all matching)
//	                               dead letters would do: a dry run, and the button that does it,
//	                               which acts on exactly the ids the dry run found (past 1,000 of
//	                               them: on the filter, at most as many as found, and the page
//	                               says so), not on dead letters that arrived since
//	POST ./redrive, ./purge        do it, and redirect (303) to the result
//	GET  ./result?r=TOKEN          what was done (a signed summary, valid 10 minutes): reloading
//	                               it does not repeat the operation
//	POST ./pause, ./resume         pause or resume a consumer
//
// # JSON API
//
//	GET  ./api/runners                            the consumers, as the page shows them
//	GET  ./api/deadletters?runner=NAME            a page of dead letters (reason, source,
//	                                              cursor, limit, body_limit) and their count;
//	                                              whole bodies (body_limit negative or over
//	                                              1024) only with limit at most 100, and
//	                                              bodies past 16 MiB a page cut to previews
//	POST ./api/pause, ./api/resume                {"runner": "orders"}
//	POST ./api/redrive, ./api/purge               {"runner": "orders", "ids": [...]} or
//	                                              {"runner": "orders", "all": true, "reason": "timeout"};
//	                                              "dry_run": true to see what would happen
//
// Errors are JSON: {"error": "..."}, with 400 for bad input, 403 for a
// refused request, 404 for an unknown consumer or dead letter, 409 for a
// consumer without dead letters (or that cannot pause), 502 or 504 when
// the broker failed or did not answer in time. A redrive or purge that did
// part of its work answers 200 with what it did and an error for the rest.
//
// # Authorization
//
// Who may use the handler is the embedding program's decision, made by
// Config.Authorize for every request. Without that hook, only requests
// from the loopback interface addressed to a loopback name (localhost,
// 127.0.0.0/8, [::1]) are served: enough for an operator on the machine or
// behind kubectl port-forward, and closed to a DNS-rebinding page, whose
// requests carry its own Host. Everything else is refused with 403.
//
// # Cross-site requests
//
// Every request a browser labels as coming from another site
// (Sec-Fetch-Site: cross-site, or same-site: a sibling subdomain) is
// refused with 403, GETs included: a page elsewhere could otherwise make
// an operator's browser load the pages, if only through an <img>, and each
// load makes the brokers work (a dead-letter listing browses the queue on
// RabbitMQ). The handler's own pages are same-origin, a typed or
// bookmarked address is "none"; requests without the header (curl, a
// program, an old browser) pass, and meet the checks below.
//
// What changes anything (and the confirmation page's dry run) is a POST,
// refused with 403 unless it passes both http.CrossOriginProtection (the
// browser says the request comes from another site) and a CSRF token: a
// signed double-submit cookie, drawn from a random key of each handler,
// that the pages put in their forms. A JSON client reads the token from the
// X-CSRF-Token header (and the cookie) of a GET, and sends both back:
//
//	curl -s -c jar -D - localhost:8080/admin/api/runners | grep -i x-csrf-token
//	curl -s -b jar -H 'Content-Type: application/json' -H 'X-CSRF-Token: TOKEN' \
//	    -d '{"runner": "orders"}' localhost:8080/admin/api/pause
//
// A new handler (a restarted process) has a new key: reload the page.
//
// The cookie is marked Secure when the request came over TLS to this
// process; behind a proxy that terminates TLS, set Config.SecureCookie.
//
// # Rates
//
// Handled and failed per second are the change of the consumers'
// counters (consumer.Stats) between two requests at least a second apart,
// so the first load shows none. The backlog is Supervisor.Backlog's,
// cached by each consumer; dead letters are counted on every load of the
// index, which on RabbitMQ browses the dead-letter queue.
//
// # Calls into runners and brokers
//
// Each call the handler makes to a runner or its broker (Backlog, Count,
// List, Redrive, Purge, Pause, Resume) runs on a goroutine of its own that
// the request abandons at Config.Timeout, even when the call ignores its
// context; the call finishes on its own. At most 8 calls per runner may be
// running at once: a ninth waits for one of them, until Config.Timeout,
// and while that many are stuck, the pages say so (504 for the JSON API)
// rather than starting more with each refresh. A redrive or
// purge abandoned that way may still complete: look again. A panic in a
// call, or an error whose Error method panics (a typed nil), is shown as
// an error and costs nothing else.
//
// # Passwords
//
// Every error and reason the handler shows has the passwords of the URLs
// in it hidden (amqp://user:xxxxx@host, ?password=xxxxx): client libraries
// often name the broker's URL, credentials included, in their errors.
package admin
