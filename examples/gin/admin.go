package main

import (
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"

	"github.com/queuekit/queuekit/admin"
)

// newAdmin returns the operator's page and JSON API (package admin), which
// routes mounts at /admin/ (under http.StripPrefix, so that its routes are
// exact): the consumers, their backlog and dead letters, pause and resume,
// redrive and purge.
//
// Who may use it: with ADMIN_TOKEN, requests that carry it, from anywhere
// (a proxy may sit in front): programs as "Authorization: Bearer TOKEN"
// (the scheme in any case), browsers through HTTP Basic authentication
// (any user name, the token as the password): a request without valid
// credentials gets 401 with a Basic challenge, so the browser asks the
// operator once and sends them with every request after. Serve it over
// TLS: both send the token as it is. Without ADMIN_TOKEN, the admin
// package's default: requests from the loopback interface addressed to a
// loopback name (localhost, 127.0.0.0/8, [::1]) only, which keeps out a
// DNS-rebinding page. Either way the package refuses cross-site requests
// and state-changing requests without its CSRF token, so that another
// site's page cannot press the buttons through an operator's browser.
func (s *service) newAdmin() (http.Handler, error) {
	cfg := admin.Config{Supervisor: s.sup, Logger: s.log, Title: "orders service"}
	if s.cfg.adminToken == "" {
		return admin.New(cfg)
	}
	token := []byte(s.cfg.adminToken)
	cfg.Authorize = func(r *http.Request) error {
		if !hasAdminToken(r, token) {
			return errAdminToken
		}
		return nil
	}
	h, err := admin.New(cfg)
	if err != nil {
		return nil, err
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !hasAdminToken(r, token) {
			w.Header().Set("WWW-Authenticate", `Basic realm="orders service admin", charset="UTF-8"`)
			http.Error(w, errAdminToken.Error(), http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	}), nil
}

// hasAdminToken reports whether r carries the token: Bearer (any case) or
// Basic with the token as the password.
func hasAdminToken(r *http.Request, token []byte) bool {
	scheme, cred, _ := strings.Cut(strings.TrimSpace(r.Header.Get("Authorization")), " ")
	cred = strings.TrimSpace(cred)
	switch {
	case strings.EqualFold(scheme, "Bearer"):
	case strings.EqualFold(scheme, "Basic"):
		b, err := base64.StdEncoding.DecodeString(cred)
		if err != nil {
			return false
		}
		_, pass, ok := strings.Cut(string(b), ":")
		if !ok {
			return false
		}
		cred = pass
	default:
		return false
	}
	return subtle.ConstantTimeCompare([]byte(cred), token) == 1
}

var errAdminToken = errors.New("admin needs ADMIN_TOKEN: Authorization: Bearer <ADMIN_TOKEN>, or Basic with it as the password")
