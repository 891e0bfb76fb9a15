package admin

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
)

// CSRF protection: a signed double-submit cookie, on top of
// http.CrossOriginProtection (which refuses what a browser labels as
// cross-origin, but not what an older browser leaves unlabelled).
//
// A token is a random nonce and its HMAC under a key that each handler
// draws at New. A page (or a GET of the JSON API) sets it as a cookie that
// only this site's requests carry (SameSite=Strict, HttpOnly) and puts it
// in its forms (and in the X-CSRF-Token response header). A state-changing
// request must carry the token twice, in the cookie and in the form field
// csrf_token or the X-CSRF-Token header, the same both times and signed by
// this handler. Another site can make a browser send the cookie (not with
// SameSite=Strict, but the cookie is only defence in depth there), but
// cannot read it, nor forge one that verifies, so it cannot fill in the
// field.
const (
	csrfCookie = "queuekit_admin_csrf"
	csrfHeader = "X-CSRF-Token"
	csrfField  = "csrf_token"
)

// csrfKey is the HMAC key of one handler.
type csrfKey [32]byte

var errCSRF = errors.New("missing or invalid CSRF token: reload the page (API: send the X-CSRF-Token header and cookie from a GET)")

func (k *csrfKey) sign(nonce []byte) []byte {
	m := hmac.New(sha256.New, k[:])
	m.Write([]byte("queuekit-admin-csrf\x00"))
	m.Write(nonce)
	return m.Sum(nil)
}

// newToken returns a fresh signed token.
func (k *csrfKey) newToken() string {
	nonce := make([]byte, 16)
	_, _ = rand.Read(nonce) // crypto/rand.Read does not fail (Go 1.24+)
	return base64.RawURLEncoding.EncodeToString(nonce) + "." + base64.RawURLEncoding.EncodeToString(k.sign(nonce))
}

// valid reports whether tok is a token this key signed.
func (k *csrfKey) valid(tok string) bool {
	n, sig, ok := strings.Cut(tok, ".")
	if !ok || len(tok) > 128 {
		return false
	}
	nonce, err1 := base64.RawURLEncoding.DecodeString(n)
	mac, err2 := base64.RawURLEncoding.DecodeString(sig)
	if err1 != nil || err2 != nil || len(nonce) != 16 {
		return false
	}
	return hmac.Equal(mac, k.sign(nonce))
}

// token returns the CSRF token of the client: the one in its cookie if it
// is valid, else a new one, set as the cookie (Path: the handler's root).
func (h *handler) token(w http.ResponseWriter, r *http.Request, rt route) string {
	if c, err := r.Cookie(csrfCookie); err == nil && h.csrf.valid(c.Value) {
		return c.Value
	}
	tok := h.csrf.newToken()
	path := rt.base
	if !strings.HasSuffix(path, "/") {
		path += "/"
	}
	http.SetCookie(w, &http.Cookie{
		Name:     csrfCookie,
		Value:    tok,
		Path:     path,
		HttpOnly: true,
		Secure:   r.TLS != nil || h.cfg.SecureCookie,
		SameSite: http.SameSiteStrictMode,
	})
	return tok
}

// checkCSRF verifies the double-submitted token of a state-changing
// request: submitted is the form field or header.
func (h *handler) checkCSRF(r *http.Request, submitted string) error {
	c, err := r.Cookie(csrfCookie)
	if err != nil || submitted == "" {
		return errCSRF
	}
	if subtle.ConstantTimeCompare([]byte(c.Value), []byte(submitted)) != 1 || !h.csrf.valid(submitted) {
		return errCSRF
	}
	return nil
}
