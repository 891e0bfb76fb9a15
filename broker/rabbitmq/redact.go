package rabbitmq

import (
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// RedactURL returns the AMQP URL raw with its password replaced by "xxxxx",
// so that it can appear in logs and errors:
//
//	RedactURL("amqp://app:s3cret@mq:5672/prod") == "amqp://app:xxxxx@mq:5672/prod"
//
// A URL that does not parse is replaced entirely ("<unparseable URL>"): it
// may still hold a password. The errors and logs of this package redact
// their URLs already; RedactURL is for a program's own messages. Of a URL
// whose password holds an unescaped "#", "?" or "/", only what follows the
// last "@" is kept.
func RedactURL(raw string) string {
	// A URL with an "@" that url.Parse did not take as the end of the
	// userinfo is suspect: an unescaped "#", "?" or "/" in the password ends
	// the authority early (amqp://u:12#34@host parses as host "u", port 12,
	// and no password), and the password then sits in a part that String
	// re-encodes in its own way (the fragment of #://: :%21000@host comes
	// back as :%20:!000@host), where no spelling of it can be found
	// reliably.
	u, err := url.Parse(raw)
	if err != nil {
		return "<unparseable URL>"
	}
	secrets, ok := hiddenPasswords(raw)
	if !ok {
		return "<unparseable URL>"
	}
	if u.User != nil {
		if p, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
			// The password url.Parse found is replaced where it stands.
			secrets = slices.DeleteFunc(secrets, func(s string) bool {
				d, err := url.PathUnescape(s)
				return s == p || (err == nil && d == p)
			})
		}
	}
	if len(secrets) == 0 {
		return u.Redacted()
	}
	at := strings.LastIndexByte(raw, '@')
	if i := strings.Index(raw, "://"); i >= 0 && i+3 <= at {
		return raw[:i+3] + "xxxxx@" + raw[at+1:]
	}
	return "xxxxx@" + raw[at+1:]
}

// redactText removes the password of raw from s, for error texts produced by
// code we do not control (the client library may quote the URL it dialled,
// with %q, or the password alone, decoded).
func redactText(s, raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		// We cannot find the password in a URL that does not parse (often
		// one with unescaped reserved characters in the password, which
		// is when libraries quote it back): cut the raw URL out, then every
		// spelling of what may be its password, then anything between a
		// scheme's "//" and the last "@".
		s = strings.ReplaceAll(s, raw, "<unparseable URL>")
		secrets, ok := hiddenPasswords(raw)
		if !ok {
			return withheld
		}
		return stripUserinfo(scrub(s, secrets))
	}
	secrets, ok := hiddenPasswords(raw)
	if !ok {
		return withheld
	}
	if u.User != nil {
		if p, ok := u.User.Password(); ok && p != "" {
			s = strings.ReplaceAll(s, raw, RedactURL(raw))
			secrets = append(secrets, p)
		}
	}
	return scrub(s, secrets)
}

// hiddenPasswords returns what may be the password in raw, as written: for
// every "@", the text between the first ":" of the userinfo before it and
// that "@". The userinfo starts after the first "://"; in a raw without one
// (malformed in some way), at the start of raw or after its first ":", both
// tried. On a well-formed URL this is the password; on a malformed one it may
// be more than the password (never less), which only redacts more.
//
// Each "@" adds a candidate as long as the URL, so the work grows with the
// square of their number: beyond maxAts candidates, ok is false and the
// caller withholds the text (no real URL has that many).
func hiddenPasswords(raw string) (secrets []string, ok bool) {
	var starts []string
	if i := strings.Index(raw, "://"); i >= 0 {
		starts = []string{raw[i+3:]}
	} else {
		starts = []string{raw}
		if i := strings.IndexByte(raw, ':'); i >= 0 {
			starts = append(starts, raw[i+1:])
		}
	}
	for _, s := range starts {
		for j := 0; j < len(s); j++ {
			if s[j] != '@' {
				continue
			}
			if c := strings.IndexByte(s[:j], ':'); c >= 0 && c+1 < j {
				if len(secrets) == maxAts {
					return nil, false
				}
				p := s[c+1 : j]
				secrets = append(secrets, p)
				// An unescaped "#", "?" or "/" in the password ends the
				// authority early, and net/url's error quotes what came
				// before it as a port ("invalid port \":S3cret\""): that
				// prefix is a secret too. Too short to find safely, and the
				// text is withheld.
				if k := strings.IndexAny(p, "#?/"); k >= 0 {
					if k < minSecret {
						return nil, false
					}
					secrets = append(secrets, p[:k])
				}
			}
		}
	}
	return secrets, true
}

// minSecret is the shortest prefix of a password that hiddenPasswords
// redacts where it stands (shorter ones would blank out ordinary words).
const minSecret = 4

// maxAts bounds the candidates hiddenPasswords considers.
const maxAts = 16

// withheld replaces an error text that redaction cannot make safe.
const withheld = "<text withheld: it may show a password from a URL too malformed to redact>"

// scrub replaces in s every secret, in every spelling a URL or an error text
// may give it (as is, percent-decoded, percent-encoded, Go-quoted), with
// "xxxxx". Longer spellings go first, so that a shorter one does not leave
// the rest of a longer one behind.
func scrub(s string, secrets []string) string {
	var forms []string
	add := func(p string) {
		if p == "" {
			return
		}
		forms = append(forms, p, url.PathEscape(p), url.QueryEscape(p))
		if ui := url.UserPassword("", p).String(); len(ui) > 1 {
			forms = append(forms, ui[1:]) // after the ":"
		}
		q := strconv.Quote(p)
		forms = append(forms, q[1:len(q)-1])
		q = strconv.QuoteToASCII(p)
		forms = append(forms, q[1:len(q)-1])
	}
	for _, p := range secrets {
		add(p)
		if d, err := url.PathUnescape(p); err == nil && d != p {
			add(d)
		}
		if d, err := url.QueryUnescape(p); err == nil && d != p {
			add(d)
		}
	}
	// Longest first; ties in a fixed order, so that the output is stable.
	slices.SortFunc(forms, func(a, b string) int {
		if len(a) != len(b) {
			return len(b) - len(a)
		}
		return strings.Compare(a, b)
	})
	for _, f := range slices.Compact(forms) {
		if f != "" && f != "xxxxx" {
			s = strings.ReplaceAll(s, f, "xxxxx")
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

// RedactError returns err with the password of the AMQP URL raw removed from
// its text, in every spelling a library may quote it (the URL as written or
// re-encoded, the password alone, decoded or escaped), for errors of code
// that dialled raw itself, such as amqp091-go's amqp.DialConfig. The result
// still matches what err matches with errors.Is and errors.As. A nil err
// gives nil. When the URL is too malformed to find its password in, the
// whole text is withheld.
func RedactError(err error, raw string) error {
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
