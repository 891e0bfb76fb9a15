package admin

import (
	"bytes"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/queuekit/queuekit/broker"
)

// maxFormBody bounds a form post: room for a page of ids.
const maxFormBody = 1 << 20

// The page's data.
type (
	pageData struct {
		Title   string
		CSRF    string
		Now     time.Time
		Runners []Runner
		Flash   string
	}
	runnerData struct {
		Title, CSRF, Runner, Reason string
		Count                       int // -1: unknown
		Items                       []broker.DeadLetter
		Next, Error                 string
		Now                         time.Time
		Limit                       int
	}
	confirmData struct {
		Title, CSRF, Runner, Op string
		Req                     Request
		Matching                int // -1: unknown
		Limit                   int
		DryRun                  broker.DeadLetterResult
		Error                   string
		// What the confirm form submits: the dry run's ids, or past
		// maxConfirmIDs of them, the filter and Max (ByFilter).
		IDs      []string
		ByFilter bool
		Max      int
		MaxIDs   int
	}
	resultData struct {
		Title string
		Res   resultView
		Error string // an invalid result link
	}
)

// servePage serves the HTML pages (see the package documentation).
func (h *handler) servePage(w http.ResponseWriter, r *http.Request, rt route) {
	ctx := r.Context()
	switch rt.leaf {
	case "":
		h.render(w, http.StatusOK, indexTmpl, pageData{Title: h.cfg.Title, CSRF: h.token(w, r, rt), Now: time.Now(), Runners: h.runners(ctx)})
		return
	case "runner":
		h.runnerPage(w, r, rt)
		return
	case "result":
		v, err := h.readResult(r.URL.Query().Get("r"), time.Now())
		if err != nil {
			h.render(w, http.StatusBadRequest, resultTmpl, resultData{Title: h.cfg.Title, Error: err.Error()})
			return
		}
		code := v.Code
		if code < 200 || code > 599 {
			code = http.StatusOK
		}
		h.render(w, code, resultTmpl, resultData{Title: h.cfg.Title, Res: v})
		return
	}
	// State-changing (or a dry run): a form post with the CSRF token.
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBody)
	if err := r.ParseForm(); err != nil {
		writeError(w, false, http.StatusBadRequest, formError(err))
		return
	}
	if err := h.checkCSRF(r, r.PostForm.Get(csrfField)); err != nil {
		h.log.Info("queuekit: admin: form without a valid CSRF token refused", "path", r.URL.Path, "remote", r.RemoteAddr)
		writeError(w, false, http.StatusForbidden, "forbidden: "+err.Error())
		return
	}
	q := formRequest(r)
	switch rt.leaf {
	case "pause", "resume":
		if err := q.check(false); err != nil {
			writeError(w, false, http.StatusBadRequest, err.Error())
			return
		}
		if err := h.pauseResume(ctx, r, rt.leaf, q.Runner); err != nil {
			writeError(w, false, statusOf(err, nil), rt.leaf+" "+q.Runner+": "+err.Error())
			return
		}
		redirect(w, "./", http.StatusSeeOther)
	case "confirm":
		h.confirmPage(w, r, rt, &q)
	case "redrive", "purge":
		if err := q.check(true); err != nil {
			writeError(w, false, http.StatusBadRequest, err.Error())
			return
		}
		q.DryRun = false
		res, err := h.act(ctx, r, rt.leaf, &q)
		code := statusOf(err, &res.Result)
		if err != nil && res.Error == "" {
			res.Error = err.Error()
		}
		// Redirect to the result, so that reloading the page shows it
		// again instead of repeating the operation.
		redirect(w, "result?"+url.Values{"r": {h.resultToken(newResultView(res, code, time.Now()))}}.Encode(), http.StatusSeeOther)
	}
}

// formError says why a form could not be read.
func formError(err error) string {
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return fmt.Sprintf("the form is too large (over %d bytes): select at most %d dead letters at once, or use the button for all of them", maxFormBody, maxIDs)
	}
	return "cannot read the form: " + err.Error()
}

// formRequest reads a Request from a form: runner, id (repeated), reason,
// all, and op (from the button pressed: "redrive" or "purge", with
// "-all" to act on every dead letter matching the reason filter).
func formRequest(r *http.Request) Request {
	f := r.PostForm
	q := Request{Runner: f.Get("runner"), Reason: f.Get("reason"), IDs: f["id"]}
	q.All = f.Get("all") == "1"
	if n, err := strconv.Atoi(f.Get("max")); err == nil {
		q.Max = n
	} else if f.Get("max") != "" {
		q.Max = -1 // refused by check
	}
	if op := f.Get("op"); strings.HasSuffix(op, "-all") {
		q.All, q.IDs = true, nil
	}
	if q.All {
		q.IDs = nil
	}
	return q
}

// confirmPage shows what a redrive or purge would do (a dry run), and the
// form that does it.
func (h *handler) confirmPage(w http.ResponseWriter, r *http.Request, rt route, q *Request) {
	op, _, _ := strings.Cut(r.PostForm.Get("op"), "-")
	if op != "redrive" && op != "purge" {
		writeError(w, false, http.StatusBadRequest, `op must be "redrive", "purge", "redrive-all" or "purge-all"`)
		return
	}
	if err := q.check(true); err != nil {
		writeError(w, false, http.StatusBadRequest, err.Error())
		return
	}
	if !q.All && len(q.IDs) == 0 {
		writeError(w, false, http.StatusBadRequest, "select some dead letters first (or use the button for all of them)")
		return
	}
	d := confirmData{Title: h.cfg.Title, CSRF: h.token(w, r, rt), Runner: q.Runner, Op: op, Req: *q, Matching: -1,
		Limit: h.redriveOptions(q).MaxRedrives}
	if n, err := h.countDL(r.Context(), q.Runner, q.selection().DeadLetterFilter); err == nil {
		d.Matching = n
	}
	dry := *q
	dry.DryRun = true
	res, err := h.act(r.Context(), r, op, &dry)
	d.DryRun = res.Result
	d.MaxIDs = maxConfirmIDs
	if n := len(res.Result.Done); n > maxConfirmIDs {
		d.ByFilter, d.Max = true, n
	} else {
		d.IDs = res.Result.Done
	}
	if err != nil {
		d.Error = err.Error()
		if statusOf(err, &res.Result) != http.StatusOK {
			h.render(w, statusOf(err, &res.Result), confirmTmpl, d)
			return
		}
	}
	h.render(w, http.StatusOK, confirmTmpl, d)
}

// runnerPage lists the dead letters of one runner, filtered and paged.
func (h *handler) runnerPage(w http.ResponseWriter, r *http.Request, rt route) {
	d := runnerData{Title: h.cfg.Title, CSRF: h.token(w, r, rt), Runner: r.URL.Query().Get("runner"),
		Reason: r.URL.Query().Get("reason"), Count: -1, Now: time.Now(), Limit: h.redriveOptions(&Request{}).MaxRedrives}
	q, err := h.listQuery(r)
	if err != nil {
		d.Error = err.Error()
		h.render(w, http.StatusBadRequest, runnerTmpl, d)
		return
	}
	q.BodyLimit = 512
	page, err := h.listDL(r.Context(), d.Runner, q)
	if err != nil {
		d.Error = err.Error()
		h.render(w, statusOf(err, nil), runnerTmpl, d)
		return
	}
	d.Items, d.Next = page.Items, page.Next
	if n, err := h.countDL(r.Context(), d.Runner, q.DeadLetterFilter); err == nil {
		d.Count = n
	}
	h.render(w, http.StatusOK, runnerTmpl, d)
}

// render executes t into a buffer first, so that a template error is a 500
// rather than half a page.
func (h *handler) render(w http.ResponseWriter, code int, t *template.Template, data any) {
	var buf bytes.Buffer
	if err := t.Execute(&buf, data); err != nil {
		h.log.Error("queuekit: admin: rendering a page", "page", t.Name(), "error", err)
		writeError(w, false, http.StatusInternalServerError, "cannot render the page")
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	_, _ = w.Write(buf.Bytes())
}

var funcs = template.FuncMap{
	"when": func(t time.Time) string {
		if t.IsZero() {
			return "–"
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	},
	"ago": func(now, t time.Time) string {
		if t.IsZero() {
			return ""
		}
		d := now.Sub(t)
		switch {
		case d < time.Second:
			return "just now"
		case d < time.Minute:
			return fmt.Sprintf("%ds ago", int(d.Seconds()))
		case d < time.Hour:
			return fmt.Sprintf("%dm ago", int(d.Minutes()))
		case d < 48*time.Hour:
			return fmt.Sprintf("%dh ago", int(d.Hours()))
		}
		return fmt.Sprintf("%dd ago", int(d.Hours()/24))
	},
	"rate": func(f *float64) string {
		if f == nil {
			return "–"
		}
		return fmt.Sprintf("%.1f", *f)
	},
	"preview": func(b []byte, size int) string {
		s := strings.ToValidUTF8(string(b), "\uFFFD")
		cut := len(b) < size
		if utf8.RuneCountInString(s) > 200 {
			s, cut = string([]rune(s)[:200]), true
		}
		if cut {
			s += " …"
		}
		return s
	},
	"runnerURL": func(name, reason string) string {
		v := url.Values{"runner": {name}}
		if reason != "" {
			v.Set("reason", reason)
		}
		return "runner?" + v.Encode()
	},
	"nextURL": func(name, reason, cursor string) string {
		v := url.Values{"runner": {name}, "cursor": {cursor}}
		if reason != "" {
			v.Set("reason", reason)
		}
		return "runner?" + v.Encode()
	},
	"plural": func(n int, one, many string) string {
		if n == 1 {
			return one
		}
		return many
	},
	"limitText": func(n int) string {
		if n < 0 {
			return "no limit"
		}
		return fmt.Sprint(n)
	},
}

const style = `<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em}
a{color:#0650a8}table{border-collapse:collapse;width:100%;background:#fff;margin:.6em 0}
th,td{border:1px solid #ddd;padding:.35em .5em;text-align:left;vertical-align:top}
th{background:#f0f0f0;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
.state{font-weight:600;padding:.1em .4em;border-radius:3px}
.running{background:#dff5df;color:#155d15}.paused{background:#fff3cd;color:#7a5a00}
.failed,.stopped,.stalled,.tripped{background:#fde2e2;color:#8a1414}.starting,.draining,.reconnecting{background:#e7eefc;color:#1d3f7a}
.err{color:#8a1414;white-space:pre-wrap;word-break:break-word}.muted{color:#777}
td code{white-space:nowrap}
pre{margin:0;white-space:pre-wrap;word-break:break-all;max-height:8em;overflow:auto;font-size:12px}
form.inline{display:inline}button{font:inherit;padding:.2em .7em;cursor:pointer}
button.danger{background:#b3261e;color:#fff;border:1px solid #8a1414}
button.go{background:#0b6b2b;color:#fff;border:1px solid #064d1d}
.box{background:#fff;border:1px solid #ddd;padding:.8em 1em;margin:.8em 0}
nav{margin-bottom:1em}
</style>`

var indexTmpl = template.Must(template.New("index").Funcs(funcs).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<meta http-equiv="refresh" content="15">
<title>{{.Title}} — consumers</title>` + style + `</head><body>
<h1>{{.Title}}</h1>
<p class="muted">Consumers of this process, {{when .Now}}. Rates are from the counters' change since the previous load (refreshes every 15 s).</p>
<table id="runners">
<thead><tr><th>Consumer</th><th>State</th><th>Restarts</th><th>In flight</th><th>Handled</th><th>Failed</th><th>Handled/s</th><th>Failed/s</th><th>Backlog</th><th>Dead letters</th><th>Last error</th><th></th></tr></thead>
<tbody>
{{range .Runners}}<tr class="runner" data-name="{{.Name}}">
<td><b>{{.Name}}</b></td>
<td><span class="state {{.State}}">{{.State}}</span><br><span class="muted">{{ago $.Now .Since}}</span>{{with .Reason}}<div class="err reason">{{.}}</div>{{end}}</td>
<td class="n">{{.Restarts}}</td>
{{with .Stats}}<td class="n">{{.InFlight}}</td><td class="n">{{.Handled}}</td><td class="n">{{.Failed}}</td>{{else}}<td class="muted">–</td><td class="muted">–</td><td class="muted">–</td>{{end}}
<td class="n">{{rate .HandledPerSec}}</td><td class="n">{{rate .FailedPerSec}}</td>
<td class="n">{{with .Backlog}}{{.Messages}}{{if ge .Consumers 0}} <span class="muted">({{.Consumers}} {{plural .Consumers "consumer" "consumers"}})</span>{{end}}{{else}}<span class="muted" title="{{.BacklogError}}">–</span>{{end}}</td>
<td class="n">{{if .HasDeadLetters}}<a class="deadletters" href="{{runnerURL .Name ""}}">{{with .DeadLetters}}{{.}}{{else}}?{{end}}</a>{{if .DeadLettersError}}<div class="err">{{.DeadLettersError}}</div>{{end}}{{else}}<span class="muted">–</span>{{end}}</td>
<td class="err">{{.LastError}}</td>
<td>{{if .Pausable}}{{if eq .State.String "paused"}}<form class="inline" method="post" action="resume"><input type="hidden" name="csrf_token" value="{{$.CSRF}}"><input type="hidden" name="runner" value="{{.Name}}"><button class="go resume" type="submit">Resume</button></form>{{else}}<form class="inline" method="post" action="pause"><input type="hidden" name="csrf_token" value="{{$.CSRF}}"><input type="hidden" name="runner" value="{{.Name}}"><button class="pause" type="submit">Pause</button></form>{{end}}{{end}}</td>
</tr>
{{else}}<tr><td colspan="12" class="muted">No consumers.</td></tr>{{end}}
</tbody></table>
<p class="muted">JSON: <a href="api/runners">api/runners</a></p>
</body></html>`))

var runnerTmpl = template.Must(template.New("runner").Funcs(funcs).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{{.Title}} — dead letters of {{.Runner}}</title>` + style + `</head><body>
<nav><a href="./">← all consumers</a></nav>
<h1>Dead letters of {{.Runner}}</h1>
{{if .Error}}<p class="err" id="error">{{.Error}}</p>{{else}}
<form method="get" action="runner" class="box">
<input type="hidden" name="runner" value="{{.Runner}}">
<label>Reason contains <input type="search" name="reason" value="{{.Reason}}" size="40"></label>
<button type="submit">Filter</button>{{if .Reason}} <a href="{{runnerURL .Runner ""}}">clear</a>{{end}}
</form>
<p id="count">{{if ge .Count 0}}{{.Count}} {{plural .Count "dead letter" "dead letters"}}{{if .Reason}} whose reason contains “{{.Reason}}”{{end}}.{{end}}
A redrive sends a dead letter back to its source for another try, with a fresh delivery budget; one redriven {{limitText .Limit}} times already is left where it is.</p>
<form method="post" action="confirm">
<input type="hidden" name="csrf_token" value="{{.CSRF}}">
<input type="hidden" name="runner" value="{{.Runner}}">
<input type="hidden" name="reason" value="{{.Reason}}">
<table id="deadletters">
<thead><tr><th></th><th>ID</th><th>Dead-lettered</th><th>Source</th><th>Attempts</th><th>Redriven</th><th>Reason</th><th>Body</th></tr></thead>
<tbody>
{{range .Items}}<tr class="deadletter" data-id="{{.ID}}">
<td><input type="checkbox" name="id" value="{{.ID}}" aria-label="select {{.ID}}"></td>
<td><code>{{.ID}}</code></td>
{{if .HasReason}}<td>{{when .Reason.Time}}<br><span class="muted">{{ago $.Now .Reason.Time}}</span></td>
<td>{{.Reason.Source}}{{if ge .Partition 0}} <span class="muted">[{{.Partition}}] @{{.Offset}}</span>{{end}}</td>
<td class="n">{{.Reason.Attempts}}{{if .Reason.Permanent}} <span class="muted">(permanent)</span>{{end}}</td>
<td class="n">{{.Redriven}}</td>
<td class="err reason">{{.Reason.Err}}</td>
{{else}}<td colspan="5" class="muted">no reason headers (not dead-lettered by queuekit)</td>{{end}}
<td><pre>{{preview .Message.Body .BodySize}}</pre><span class="muted">{{.BodySize}} bytes</span></td>
</tr>
{{else}}<tr><td colspan="8" class="muted">No dead letters{{if .Reason}} match the filter{{end}}.</td></tr>{{end}}
</tbody></table>
{{if .Next}}<p><a id="next" href="{{nextURL .Runner .Reason .Next}}">next page →</a></p>{{end}}
{{if .Items}}<div class="box">
<button class="go" id="redrive-selected" type="submit" name="op" value="redrive">Redrive selected…</button>
<button class="danger" id="purge-selected" type="submit" name="op" value="purge">Purge selected…</button>
&nbsp;|&nbsp;
<button class="go" id="redrive-all" type="submit" name="op" value="redrive-all">Redrive all{{if .Reason}} matching{{end}}…</button>
<button class="danger" id="purge-all" type="submit" name="op" value="purge-all">Purge all{{if .Reason}} matching{{end}}…</button>
<span class="muted">Each asks for confirmation first.</span>
</div>{{end}}
</form>{{end}}
</body></html>`))

var confirmTmpl = template.Must(template.New("confirm").Funcs(funcs).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{{.Title}} — confirm {{.Op}}</title>` + style + `</head><body>
<nav><a href="{{runnerURL .Runner .Req.Reason}}">← back to the dead letters of {{.Runner}}</a></nav>
<h1>Confirm: {{.Op}} dead letters of {{.Runner}}</h1>
<div class="box" id="plan">
<p>You asked to {{.Op}} {{if .Req.All}}<b>every dead letter</b>{{if .Req.Reason}} whose reason contains “{{.Req.Reason}}”{{end}}{{if ge .Matching 0}} ({{.Matching}} now){{end}}{{else}}<b>{{len .Req.IDs}} selected {{plural (len .Req.IDs) "dead letter" "dead letters"}}</b>{{end}}.</p>
{{if eq .Op "redrive"}}<p>Each is sent back to its source queue or topic for another try, with its attempt count reset and its redrive count raised; the broker confirms the copy before the dead letter is removed. A dead letter redriven {{limitText .Limit}} times already is left where it is.</p>
{{else}}<p><b>Purged dead letters are deleted for good.</b></p>{{end}}
<p>A dry run just now found: <b id="would">{{len .DryRun.Done}}</b> would be {{if eq .Op "redrive"}}redriven{{else}}purged{{end}}{{if .DryRun.Skipped}}, {{len .DryRun.Skipped}} skipped{{end}}{{if .DryRun.Missing}}, {{len .DryRun.Missing}} not found{{end}}.</p>
{{if .DryRun.Done}}<p class="muted">{{range $i, $id := .DryRun.Done}}{{if lt $i 50}}<code>{{$id}}</code> {{end}}{{end}}{{if gt (len .DryRun.Done) 50}}and {{len .DryRun.Done}} in all{{end}}</p>{{end}}
{{if .DryRun.Skipped}}<table><thead><tr><th>Skipped</th><th>Why</th></tr></thead><tbody>{{range .DryRun.Skipped}}<tr><td><code>{{.ID}}</code></td><td class="err">{{.Err}}</td></tr>{{end}}</tbody></table>{{end}}
{{if .DryRun.Missing}}<p class="err">Not found (any more): {{range .DryRun.Missing}}<code>{{.}}</code> {{end}}</p>{{end}}
{{if .Error}}<p class="err" id="error">{{.Error}}</p>{{end}}
</div>
{{if .DryRun.Done}}<form method="post" action="{{.Op}}">
<input type="hidden" name="csrf_token" value="{{.CSRF}}">
<input type="hidden" name="runner" value="{{.Runner}}">
<input type="hidden" name="reason" value="{{.Req.Reason}}">
{{if .ByFilter}}<input type="hidden" name="all" value="1"><input type="hidden" name="max" value="{{.Max}}">
<p id="byfilter">The dry run found more than {{.MaxIDs}} dead letters, too many for this form to name: confirming acts on at most {{.Max}} dead letters{{if .Req.Reason}} whose reason contains “{{.Req.Reason}}”{{end}}, oldest first, as they are then, which may include some that arrived since.</p>
{{else}}{{range .IDs}}<input type="hidden" name="id" value="{{.}}">{{end}}
<p class="muted">Confirming acts on exactly the {{len .IDs}} {{plural (len .IDs) "dead letter" "dead letters"}} the dry run found; any that arrived since are left alone.</p>{{end}}
<button id="confirm" type="submit" class="{{if eq .Op "purge"}}danger{{else}}go{{end}}">Yes, {{.Op}} {{if .ByFilter}}up to {{.Max}}{{else}}{{len .IDs}}{{end}} {{plural (len .DryRun.Done) "dead letter" "dead letters"}}</button>
<a href="{{runnerURL .Runner .Req.Reason}}">Cancel</a>
</form>{{else}}<p>Nothing to do. <a href="{{runnerURL .Runner .Req.Reason}}">Back</a></p>{{end}}
</body></html>`))

var resultTmpl = template.Must(template.New("result").Funcs(funcs).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{{.Title}} — {{.Res.Op}} done</title>` + style + `</head><body>
{{if .Error}}<nav><a href="./">← all consumers</a></nav>
<p class="err" id="error">{{.Error}}</p>{{else}}
<nav><a href="./">← all consumers</a> · <a href="{{runnerURL .Res.Runner ""}}">dead letters of {{.Res.Runner}}</a></nav>
<h1>{{.Res.Op}}: {{.Res.Runner}}</h1>
<div class="box" id="result">
<p><b id="done">{{.Res.Done}}</b> {{plural .Res.Done "dead letter" "dead letters"}} {{if eq .Res.Op "redrive"}}redriven: sent back to the source{{else}}purged{{end}}{{if .Res.Skipped}}, {{.Res.Skipped}} skipped{{end}}{{if .Res.Missing}}, {{.Res.Missing}} not found{{end}}.</p>
{{if .Res.DoneIDs}}<p class="muted">{{range .Res.DoneIDs}}<code>{{.}}</code> {{end}}{{if gt .Res.Done (len .Res.DoneIDs)}}…{{end}}</p>{{end}}
{{if .Res.Skips}}<table><thead><tr><th>Skipped</th><th>Why</th></tr></thead><tbody>{{range .Res.Skips}}<tr><td><code>{{.ID}}</code></td><td class="err">{{.Err}}</td></tr>{{end}}</tbody></table>{{end}}
{{if .Res.Lost}}<p class="err">Not found (any more): {{range .Res.Lost}}<code>{{.}}</code> {{end}}</p>{{end}}
{{if .Res.Error}}<p class="err" id="error">{{.Res.Error}}</p>{{end}}
</div>
<p class="muted">Reloading this page shows this result again; it does not repeat the {{.Res.Op}}.</p>{{end}}
</body></html>`))
