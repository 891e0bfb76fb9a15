package main

import (
	"crypto/subtle"
	"errors"
	"net/http"
	"strings"

	"github.com/queuekit/queuekit/admin"
)

// newAdmin returns the operator's page and JSON API (package admin), which
// routes mounts at /admin/: the consumers, their backlog and dead letters,
// pause and resume, redrive and purge.
//
// Who may use it: with ADMIN_TOKEN, requests that carry it (Authorization:
// Bearer), from anywhere (a proxy may sit in front); without, the admin
// package's default, requests from the loopback interface addressed to a
// loopback name (localhost, 127.0.0.0/8, [::1]) only, which keeps out a
// DNS-rebinding page. Either way the package refuses cross-origin requests
// and state-changing requests without its CSRF token, so that another
// site's page cannot press the buttons through an operator's browser.
func (s *service) newAdmin() (http.Handler, error) {
	cfg := admin.Config{Supervisor: s.sup, Logger: s.log, Title: "orders service"}
	if s.cfg.adminToken != "" {
		token := []byte(s.cfg.adminToken)
		cfg.Authorize = func(r *http.Request) error {
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if ok && subtle.ConstantTimeCompare([]byte(got), token) == 1 {
				return nil
			}
			return errAdminToken
		}
	}
	return admin.New(cfg)
}

var errAdminToken = errors.New("admin needs Authorization: Bearer <ADMIN_TOKEN>")
