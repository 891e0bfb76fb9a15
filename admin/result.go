package admin

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"time"
)

// After a redrive or purge from a form, the handler redirects (303) to the
// result page, so that reloading it shows the result again rather than
// repeating the operation. The result travels in the URL as a signed token
// (HMAC under the handler's key), valid for resultTTL: counts, the error,
// and the first few ids, so the URL stays short.

const (
	resultTTL    = 10 * time.Minute
	resultIDs    = 20  // ids of each kind carried
	resultIDLen  = 100 // bytes of an id carried
	resultErrLen = 500 // bytes of an error carried
)

// resultView is what the result page shows.
type resultView struct {
	Runner  string    `json:"r"`
	Op      string    `json:"o"`
	Code    int       `json:"c"`
	Done    int       `json:"d"`
	Skipped int       `json:"s,omitempty"`
	Missing int       `json:"m,omitempty"`
	DoneIDs []string  `json:"di,omitempty"`
	Skips   []skipRow `json:"sk,omitempty"`
	Lost    []string  `json:"mi,omitempty"`
	Error   string    `json:"e,omitempty"`
	At      int64     `json:"t"`
}

type skipRow struct {
	ID  string `json:"i"`
	Err string `json:"e"`
}

func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}

func cutIDs(ids []string) []string {
	var out []string
	for i, id := range ids {
		if i == resultIDs {
			break
		}
		out = append(out, cut(id, resultIDLen))
	}
	return out
}

// newResultView summarizes a result for the page.
func newResultView(res Result, code int, now time.Time) resultView {
	v := resultView{Runner: cut(res.Runner, 200), Op: res.Op, Code: code, Done: len(res.Result.Done),
		Skipped: len(res.Result.Skipped), Missing: len(res.Result.Missing), DoneIDs: cutIDs(res.Result.Done),
		Lost: cutIDs(res.Result.Missing), Error: cut(redact(res.Error), resultErrLen), At: now.Unix()}
	for i, s := range res.Result.Skipped {
		if i == resultIDs {
			break
		}
		v.Skips = append(v.Skips, skipRow{ID: cut(s.ID, resultIDLen), Err: cut(redact(s.Err), 200)})
	}
	return v
}

func (k *csrfKey) signResult(b []byte) []byte {
	m := hmac.New(sha256.New, k[:])
	m.Write([]byte("queuekit-admin-result\x00"))
	m.Write(b)
	return m.Sum(nil)
}

// resultToken encodes and signs v.
func (h *handler) resultToken(v resultView) string {
	b, _ := json.Marshal(v) // plain strings and ints: cannot fail
	return base64.RawURLEncoding.EncodeToString(b) + "." + base64.RawURLEncoding.EncodeToString(h.csrf.signResult(b))
}

var errResultToken = errors.New("this result link is not valid (or is older than 10 minutes): see the dead letters as they are now")

// readResult verifies a token and returns its result.
func (h *handler) readResult(tok string, now time.Time) (resultView, error) {
	var v resultView
	p, s, ok := strings.Cut(tok, ".")
	if !ok || len(tok) > 16<<10 {
		return v, errResultToken
	}
	b, err1 := base64.RawURLEncoding.DecodeString(p)
	sig, err2 := base64.RawURLEncoding.DecodeString(s)
	if err1 != nil || err2 != nil || !hmac.Equal(sig, h.csrf.signResult(b)) || json.Unmarshal(b, &v) != nil {
		return v, errResultToken
	}
	if age := now.Sub(time.Unix(v.At, 0)); age < -time.Minute || age > resultTTL {
		return v, errResultToken
	}
	return v, nil
}

// Confirmation: the form of the confirmation page carries the ids its dry
// run found, so that "Yes" acts on what the page showed and nothing that
// arrived since. Past maxConfirmIDs ids (a form of that many is large),
// it carries the filter and Max, the dry run's count, instead, and the
// page says so.
const maxConfirmIDs = 1000
