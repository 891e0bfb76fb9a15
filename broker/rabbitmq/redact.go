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
	if err != nil || u.User == nil {
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
