package admin

import (
	"regexp"
	"strings"
)

// Errors shown by the handler (a runner's last error, a broker's answer)
// often name a broker URL, and client libraries put its password in:
// "dial amqp://svc:secret@mq:5672/". Every text the handler shows goes
// through redact, which hides the password of any URL's userinfo
// (scheme://user:xxxxx@host) and the value of password-like query
// parameters (?password=xxxxx). It is stdlib only, since the core module
// cannot import an adapter's redactor (rabbitmq.RedactURL).

const redacted = "xxxxx"

var (
	// userinfoRE matches scheme://user:password@; the password may hold
	// anything but whitespace, '@' and '/', percent-encoded bytes included.
	userinfoRE = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.\-]*://[^\s:@/?#]*):[^\s@/]*@`)
	// queryRE matches a password-like query parameter and its value.
	queryRE = regexp.MustCompile(`(?i)([?&;](?:password|passwd|pass|pwd|secret|token|access_token|api_key|apikey|auth)=)[^&;#\s"'<>]*`)
)

// redact returns s with the passwords of the URLs in it hidden.
func redact(s string) string {
	if !strings.Contains(s, "@") && !strings.Contains(s, "=") {
		return s
	}
	s = userinfoRE.ReplaceAllString(s, "${1}:"+redacted+"@")
	return queryRE.ReplaceAllString(s, "${1}"+redacted)
}
