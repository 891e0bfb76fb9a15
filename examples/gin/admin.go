package main

import (
	"crypto/subtle"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"strings"

	"github.com/gin-gonic/gin"
)

// Why each check of adminOnly is there (the outside review of issue 10
// paused a consumer from another site's page, and read the admin report
// through DNS rebinding):
//
//   - The remote address: without a token, only a process on this machine
//     may call. But a browser on this machine is such a process, and it
//     runs other sites' pages, hence the rest.
//   - The Host: a DNS-rebinding page (attacker.example, re-resolved to
//     127.0.0.1) reaches the loopback interface and, being same-origin with
//     itself, may read the answers; its requests carry Host:
//     attacker.example. Without a token only loopback names are accepted.
//     With a token the Host is free (a proxy may sit in front), since the
//     page cannot know the token.
//   - Sec-Fetch-Site / Origin (http.CrossOriginProtection): a browser says
//     when a request comes from another site; such a request may not
//     change anything, token or not (an embedding app whose browser
//     clients hold the token must not be open to forged requests either).
//   - Content-Type: application/json on a state-changing request: an HTML
//     form cannot send it and a cross-origin fetch cannot send it without
//     a CORS preflight, which this service never grants. This covers the
//     browsers that send neither Sec-Fetch-Site nor Origin.
//
// Safe methods (GET, HEAD, OPTIONS) change nothing: they need the token or
// the loopback checks only.

// adminJSON is the content type a state-changing admin request must carry.
const adminJSON = "application/json"

// crossOrigin refuses cross-origin browser requests with unsafe methods. Its
// zero value trusts no other origin; it is never modified, so it is safe to
// share between requests.
var crossOrigin http.CrossOriginProtection

// adminOnly guards the admin endpoints: with ADMIN_TOKEN, requests that
// carry it (Authorization: Bearer); without, requests from the loopback
// interface addressed to a loopback name (localhost, 127.0.0.0/8, [::1]).
// In both cases a state-changing request (POST) must come from no other
// site and carry Content-Type: application/json.
func (s *service) adminOnly(c *gin.Context) {
	r := c.Request
	if err := crossOrigin.Check(r); err != nil {
		c.AbortWithStatusJSON(http.StatusForbidden, gin.H{"error": "admin endpoints refuse cross-origin requests: " + err.Error()})
		return
	}
	if !safeMethod(r.Method) && !isJSON(r.Header.Get("Content-Type")) {
		c.AbortWithStatusJSON(http.StatusForbidden, gin.H{"error": "admin " + r.Method + " requests need the header Content-Type: " + adminJSON + " (which an HTML form cannot send)"})
		return
	}
	if s.cfg.adminToken != "" {
		got, ok := strings.CutPrefix(c.GetHeader("Authorization"), "Bearer ")
		if ok && subtle.ConstantTimeCompare([]byte(got), []byte(s.cfg.adminToken)) == 1 {
			return
		}
		c.AbortWithStatusJSON(http.StatusUnauthorized, gin.H{"error": "admin endpoints need Authorization: Bearer <ADMIN_TOKEN>"})
		return
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		c.AbortWithStatusJSON(http.StatusForbidden, gin.H{"error": "admin endpoints answer loopback requests only unless ADMIN_TOKEN is set"})
		return
	}
	if !loopbackHost(r.Host) {
		c.AbortWithStatusJSON(http.StatusForbidden, gin.H{"error": "admin endpoints answer only requests to localhost, 127.0.0.1 or [::1] (the Host header) unless ADMIN_TOKEN is set"})
	}
}

// safeMethod reports whether method is one that changes nothing, as
// http.CrossOriginProtection counts them.
func safeMethod(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return true
	}
	return false
}

// isJSON reports whether the Content-Type header value names
// application/json, with or without parameters such as a charset.
func isJSON(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	return err == nil && mt == adminJSON
}

// loopbackHost reports whether a Host header value names this machine's
// loopback interface: localhost, an address in 127.0.0.0/8 or ::1, with or
// without a port. Other names that resolve to a loopback address (a
// rebinding attacker's) are not loopback names.
func loopbackHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	} else if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Zone() == "" && ip.IsLoopback()
}
