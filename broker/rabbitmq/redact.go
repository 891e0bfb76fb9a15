package rabbitmq

import (
	"net/url"
	"strings"
)

// redactURL returns raw with its password replaced by "xxxxx", so that it can
// appear in errors and logs. A URL that does not parse is replaced entirely:
// it may still hold a password we failed to find.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "<unparseable URL>"
	}
	if u.User != nil {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		}
	}
	return u.Redacted()
}

// redactText removes the password of raw from s, for error texts produced by
// code we do not control (the client library may quote the URL it dialled).
func redactText(s, raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		// We cannot find the password in a URL that does not parse (often
		// one with unescaped reserved characters in the password, which
		// is when libraries quote it back): cut the raw URL and anything
		// between a scheme's "//" and the last "@" out of the text.
		s = strings.ReplaceAll(s, raw, "<unparseable URL>")
		return stripUserinfo(s)
	}
	if u.User == nil {
		return s
	}
	if p, ok := u.User.Password(); ok && p != "" {
		s = strings.ReplaceAll(s, raw, redactURL(raw))
		s = strings.ReplaceAll(s, p, "xxxxx")
		if ep := url.PathEscape(p); ep != p {
			s = strings.ReplaceAll(s, ep, "xxxxx")
		}
		if ep := url.QueryEscape(p); ep != p {
			s = strings.ReplaceAll(s, ep, "xxxxx")
		}
	}
	return s
}

// redactedError hides a password in the text of an error from the client
// library while keeping it matchable with errors.Is/As.
type redactedError struct {
	err  error
	text string
}

func (e *redactedError) Error() string { return e.text }
func (e *redactedError) Unwrap() error { return e.err }

func redactErr(err error, raw string) error {
	if err == nil {
		return nil
	}
	text := redactText(err.Error(), raw)
	if text == err.Error() {
		return err
	}
	return &redactedError{err: err, text: text}
}

// stripUserinfo removes "user:password@" from every "scheme://…@" in s.
func stripUserinfo(s string) string {
	var b strings.Builder
	for {
		i := strings.Index(s, "://")
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		b.WriteString(s[:i+3])
		s = s[i+3:]
		end := strings.IndexAny(s, " \t\n\"'`")
		if end < 0 {
			end = len(s)
		}
		if at := strings.LastIndex(s[:end], "@"); at >= 0 {
			b.WriteString("xxxxx@")
			s = s[at+1:]
		}
	}
}
