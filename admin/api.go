package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// maxJSONBody bounds the body of a JSON API request: room for
// broker.MaxListLimit ids of a hundred bytes each.
const maxJSONBody = 1 << 20

// maxIDs bounds the ids of one selection.
const maxIDs = broker.MaxListLimit

// Request is the body of the JSON API's POST requests: the runner, and for
// redrive and purge the dead letters to act on.
type Request struct {
	// Runner is the name the runner was added to the Supervisor under.
	Runner string `json:"runner"`
	// IDs, Reason and Source select dead letters (see
	// broker.DeadLetterFilter); All selects every one when they are
	// empty; Max stops after that many (oldest first).
	IDs    []string `json:"ids,omitempty"`
	Reason string   `json:"reason,omitempty"`
	Source string   `json:"source,omitempty"`
	All    bool     `json:"all,omitempty"`
	Max    int      `json:"max,omitempty"`
	// DryRun reports what would be done, and does nothing.
	DryRun bool `json:"dry_run,omitempty"`
	// MaxRedrives, when positive, lowers the redrive limit below the
	// handler's (Config.MaxRedrives).
	MaxRedrives int `json:"max_redrives,omitempty"`
}

// Result is the answer to a redrive or purge.
type Result struct {
	Runner string                  `json:"runner"`
	Op     string                  `json:"op"`
	Result broker.DeadLetterResult `json:"result"`
	// Error, when set, says what was not done (the ids missing or skipped,
	// or the error that stopped the operation; Result says what was done
	// before).
	Error string `json:"error,omitempty"`
}

// check validates a request's fields.
func (q *Request) check(needSelection bool) error {
	switch {
	case q.Runner == "":
		return errors.New(`"runner" is required`)
	case len(q.Runner) > 1024:
		return errors.New(`"runner" is too long`)
	case !needSelection:
		return nil
	case len(q.IDs) > maxIDs:
		return fmt.Errorf("at most %d ids at once, not %d", maxIDs, len(q.IDs))
	case q.Max < 0:
		return errors.New(`"max" cannot be negative`)
	case q.MaxRedrives < 0:
		return errors.New(`"max_redrives" cannot be negative: the handler's limit is the highest`)
	}
	for _, id := range q.IDs {
		if id == "" || len(id) > 1024 {
			return errors.New("ids must be non-empty and at most 1024 bytes")
		}
	}
	return nil
}

// selection turns the request into a broker selection.
func (q *Request) selection() broker.DeadLetterSelection {
	return broker.DeadLetterSelection{
		DeadLetterFilter: broker.DeadLetterFilter{IDs: q.IDs, Reason: q.Reason, Source: q.Source},
		All:              q.All,
		Max:              q.Max,
	}
}

// redriveOptions returns the options of a redrive: the handler's limit, or
// the request's when it is lower.
func (h *handler) redriveOptions(q *Request) broker.RedriveOptions {
	limit := broker.RedriveOptions{MaxRedrives: h.cfg.MaxRedrives}.Limit()
	if q.MaxRedrives > 0 && (limit < 0 || q.MaxRedrives < limit) {
		limit = q.MaxRedrives
	}
	return broker.RedriveOptions{MaxRedrives: limit, DryRun: q.DryRun}
}

// act runs a redrive or purge (op) for q and logs it.
func (h *handler) act(ctx context.Context, r *http.Request, op string, q *Request) (Result, error) {
	out := Result{Runner: q.Runner, Op: op}
	sel := q.selection()
	if err := sel.Check(); err != nil {
		return out, err
	}
	var err error
	switch op {
	case "redrive":
		out.Result, err = h.redriveDL(ctx, q.Runner, sel, h.redriveOptions(q))
	case "purge":
		out.Result, err = h.purgeDL(ctx, q.Runner, sel, q.DryRun)
	default:
		return out, fmt.Errorf("unknown operation %q", op)
	}
	for i := range out.Result.Skipped {
		out.Result.Skipped[i].Err = redact(out.Result.Skipped[i].Err)
	}
	if err != nil {
		out.Error = err.Error()
	}
	if !q.DryRun {
		h.log.Info("queuekit: admin: "+op, "runner", q.Runner, "done", len(out.Result.Done),
			"skipped", len(out.Result.Skipped), "missing", len(out.Result.Missing), "error", err, "remote", r.RemoteAddr)
	}
	return out, err
}

// pauseResume pauses or resumes a runner and logs it.
func (h *handler) pauseResume(ctx context.Context, r *http.Request, op, name string) error {
	_, err := call(ctx, h, name, op, func(ctx context.Context) (struct{}, error) {
		if op == "pause" {
			return struct{}{}, h.sup.Pause(ctx, name)
		}
		return struct{}{}, h.sup.Resume(ctx, name)
	})
	h.log.Info("queuekit: admin: "+op, "runner", name, "error", err, "remote", r.RemoteAddr)
	return err
}

// statusOf maps an operation's error to an HTTP status. A redrive or purge
// that did some of its work answers 200 with the error in its result.
func statusOf(err error, res *broker.DeadLetterResult) int {
	switch {
	case err == nil:
		return http.StatusOK
	case errors.Is(err, consumer.ErrUnknownRunner):
		return http.StatusNotFound
	case errors.Is(err, consumer.ErrNoDeadLetters), errors.Is(err, consumer.ErrNotPausable):
		return http.StatusConflict
	case errors.Is(err, broker.ErrEmptySelection), errors.Is(err, broker.ErrInvalidConfig):
		return http.StatusBadRequest
	case res != nil && len(res.Done)+len(res.Skipped) > 0:
		return http.StatusOK
	case errors.Is(err, broker.ErrDeadLetterNotFound):
		return http.StatusNotFound
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout
	}
	return http.StatusBadGateway
}

// serveAPI serves the JSON API (see the package documentation).
func (h *handler) serveAPI(w http.ResponseWriter, r *http.Request, rt route) {
	ctx := r.Context()
	switch rt.leaf {
	case "runners":
		w.Header().Set(csrfHeader, h.token(w, r, rt))
		writeJSON(w, http.StatusOK, struct {
			Runners   []Runner `json:"runners"`
			CSRFToken string   `json:"csrf_token"`
		}{h.runners(ctx), w.Header().Get(csrfHeader)})
		return
	case "deadletters":
		w.Header().Set(csrfHeader, h.token(w, r, rt))
		h.apiDeadLetters(w, r)
		return
	}
	// State-changing: JSON, CSRF token.
	if !isJSON(r.Header.Get("Content-Type")) {
		writeError(w, true, http.StatusUnsupportedMediaType, "the body must be JSON (Content-Type: application/json)")
		return
	}
	if err := h.checkCSRF(r, r.Header.Get(csrfHeader)); err != nil {
		h.log.Info("queuekit: admin: request without a valid CSRF token refused", "path", r.URL.Path, "remote", r.RemoteAddr)
		writeError(w, true, http.StatusForbidden, err.Error())
		return
	}
	var q Request
	if err := decodeJSON(w, r, &q); err != nil {
		writeError(w, true, http.StatusBadRequest, err.Error())
		return
	}
	switch rt.leaf {
	case "pause", "resume":
		if err := q.check(false); err != nil {
			writeError(w, true, http.StatusBadRequest, err.Error())
			return
		}
		if err := h.pauseResume(ctx, r, rt.leaf, q.Runner); err != nil {
			writeError(w, true, statusOf(err, nil), err.Error())
			return
		}
		writeJSON(w, http.StatusOK, struct {
			Runners []Runner `json:"runners"`
		}{h.runners(ctx)})
	case "redrive", "purge":
		if err := q.check(true); err != nil {
			writeError(w, true, http.StatusBadRequest, err.Error())
			return
		}
		res, err := h.act(ctx, r, rt.leaf, &q)
		code := statusOf(err, &res.Result)
		if code != http.StatusOK && res.Error == "" && err != nil {
			res.Error = err.Error()
		}
		writeJSON(w, code, res)
	}
}

// DeadLetterList is the answer to GET api/deadletters.
type DeadLetterList struct {
	Runner string `json:"runner"`
	// Count is how many dead letters match the filter (-1 when the broker
	// did not say).
	Count int                 `json:"count"`
	Items []broker.DeadLetter `json:"items"`
	// Next is the cursor of the next page; empty on the last.
	Next string `json:"next,omitempty"`
	// BodiesCut is true when some bodies were cut to a preview
	// (broker.DefaultBodyPreview bytes; BodySize says how long they are)
	// because the page's bodies came to more than 16 MiB.
	BodiesCut bool `json:"bodies_cut,omitempty"`
}

// A page of dead letters answers whole bodies (body_limit negative or over
// broker.DefaultBodyPreview) only for at most maxWholeBodies of them, and
// cuts bodies to previews past maxListBodies bytes in all.
const (
	maxWholeBodies = 100
	maxListBodies  = 16 << 20
)

func (h *handler) apiDeadLetters(w http.ResponseWriter, r *http.Request) {
	q, err := h.listQuery(r)
	if err != nil {
		writeError(w, true, http.StatusBadRequest, err.Error())
		return
	}
	runner := r.URL.Query().Get("runner")
	page, err := h.listDL(r.Context(), runner, q)
	if err != nil {
		writeError(w, true, statusOf(err, nil), err.Error())
		return
	}
	n, err := h.countDL(r.Context(), runner, q.DeadLetterFilter)
	if err != nil {
		n = -1
	}
	if page.Items == nil {
		page.Items = []broker.DeadLetter{}
	}
	cut := false
	total := 0
	for i := range page.Items {
		d := &page.Items[i]
		if total+len(d.Message.Body) > maxListBodies && len(d.Message.Body) > broker.DefaultBodyPreview {
			size := max(d.BodySize, len(d.Message.Body))
			broker.CutBody(d, broker.DefaultBodyPreview)
			d.BodySize, cut = size, true
		}
		total += len(d.Message.Body)
	}
	writeJSON(w, http.StatusOK, DeadLetterList{Runner: runner, Count: n, Items: page.Items, Next: page.Next, BodiesCut: cut})
}

// listQuery reads a dead-letter query from the URL: runner (required),
// reason, source, cursor, limit, body_limit.
func (h *handler) listQuery(r *http.Request) (broker.DeadLetterQuery, error) {
	v := r.URL.Query()
	q := broker.DeadLetterQuery{Limit: h.page, Cursor: v.Get("cursor")}
	q.Reason, q.Source = v.Get("reason"), v.Get("source")
	if v.Get("runner") == "" {
		return q, errors.New(`the query parameter "runner" is required`)
	}
	for _, p := range []struct {
		name string
		dst  *int
	}{{"limit", &q.Limit}, {"body_limit", &q.BodyLimit}} {
		if s := v.Get(p.name); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil {
				return q, fmt.Errorf("%s must be an integer", p.name)
			}
			*p.dst = n
		}
	}
	if q.Limit < 1 || q.Limit > broker.MaxListLimit {
		return q, fmt.Errorf("limit must be from 1 to %d", broker.MaxListLimit)
	}
	if q.BodyLimit > 1<<20 {
		return q, errors.New("body_limit must be at most 1 MiB (negative: whole bodies)")
	}
	if q.Limit > maxWholeBodies && (q.BodyLimit < 0 || q.BodyLimit > broker.DefaultBodyPreview) {
		return q, fmt.Errorf("body_limit over %d bytes (or negative: whole bodies) needs limit at most %d", broker.DefaultBodyPreview, maxWholeBodies)
	}
	if len(q.Cursor) > 4096 || len(q.Reason) > 4096 || len(q.Source) > 4096 {
		return q, errors.New("cursor, reason and source must be at most 4096 bytes")
	}
	return q, q.Resolve()
}

// decodeJSON reads one JSON object into v, refusing unknown fields, a body
// over maxJSONBody, and anything after the object.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxJSONBody))
	if err != nil {
		return fmt.Errorf("cannot read the body (at most %d bytes)", maxJSONBody)
	}
	if !utf8.Valid(body) {
		return errors.New("the body is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("malformed JSON request: %v", err)
	}
	if len(bytes.TrimSpace(body[dec.InputOffset():])) > 0 {
		return errors.New("the body must hold one JSON object")
	}
	return nil
}

// isJSON reports whether a Content-Type value names application/json.
func isJSON(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	return err == nil && mt == "application/json"
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		code, b = http.StatusInternalServerError, []byte(`{"error":"cannot encode the answer"}`)
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}

// writeError answers with an error: JSON for the API, plain text for pages.
func writeError(w http.ResponseWriter, api bool, code int, msg string) {
	if api {
		writeJSON(w, code, struct {
			Error string `json:"error"`
		}{redact(msg)})
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	_, _ = io.WriteString(w, strings.ToValidUTF8(redact(msg), "\uFFFD")+"\n")
}
