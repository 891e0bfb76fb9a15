package main

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// escape makes s safe to print on a terminal: control characters
// (C0, DEL, C1), Unicode format characters (bidirectional overrides,
// zero-width characters), line and paragraph separators and bytes that are
// not UTF-8 are written as Go escapes (\n, \x1b, \u202e), and a backslash as
// \\, so that the output is unambiguous. Printable text, other scripts
// included, is left as it is. Dead letters are written by anyone: their
// bytes must never reach the terminal raw (an ESC sequence can retitle the
// window, hide lines or worse).
func escape(s string) string {
	if isPlain(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		case unsafeRune(r):
			if r <= 0xffff {
				fmt.Fprintf(&b, `\u%04x`, r)
			} else {
				fmt.Fprintf(&b, `\U%08x`, r)
			}
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

// isPlain reports whether s needs no escaping (the common case: ASCII text).
func isPlain(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= 0x7f || c == '\\' {
			return false
		}
	}
	return true
}

// unsafeRune reports whether r, a valid rune of 0x80 or more, must be escaped:
// C1 controls, format characters (Cf: bidi overrides and isolates,
// zero-width joiners, the BOM), line and paragraph separators, private use,
// surrogates and unassigned code points.
func unsafeRune(r rune) bool {
	return unicode.IsControl(r) || unicode.In(r, unicode.Cf, unicode.Zl, unicode.Zp, unicode.Co, unicode.Cs) ||
		!unicode.IsPrint(r) && !unicode.IsSpace(r)
}

// cut escapes s and cuts the result to at most width runes, ending it with
// "…" when it was longer. It never cuts inside an escape sequence.
func cut(s string, width int) string {
	e := escape(s)
	if utf8.RuneCountInString(e) <= width {
		return e
	}
	if width < 1 {
		return ""
	}
	// Cut on rune boundaries, then step back out of a cut escape.
	runes := []rune(e)[:width-1]
	out := string(runes)
	if i := strings.LastIndexByte(out, '\\'); i >= 0 {
		// Count the backslashes before i: an odd run means out ends inside
		// (or right after the start of) an escape when what follows it is
		// shorter than the escape.
		n := 0
		for j := i; j >= 0 && out[j] == '\\'; j-- {
			n++
		}
		if n%2 == 1 && !completeEscape(out[i:]) {
			out = out[:i]
		}
	}
	return out + "…"
}

// completeEscape reports whether esc, which starts with a backslash, holds
// a whole escape sequence.
func completeEscape(esc string) bool {
	if len(esc) < 2 {
		return false
	}
	switch esc[1] {
	case 'x':
		return len(esc) >= 4
	case 'u':
		return len(esc) >= 6
	case 'U':
		return len(esc) >= 10
	default:
		return true
	}
}

// escapeErr escapes the text of an error for the terminal like escape, but
// leaves backslashes as they are: the adapters quote names in their errors
// with %q (Go syntax, whose escapes are already printable), and doubling
// those backslashes would print them twice escaped ("\\x1b"). Control and
// format characters that reach the text raw are still escaped.
func escapeErr(s string) string {
	if !strings.ContainsRune(s, '\\') {
		return escape(s)
	}
	parts := strings.Split(s, `\`)
	for i, p := range parts {
		parts[i] = escape(p)
	}
	return strings.Join(parts, `\`)
}

// unescape reads back a string that escape wrote: an id or a cursor as the
// table prints it. \\, \n, \r, \t, \xHH (one byte, so bytes that are not
// UTF-8 round-trip), \uHHHH and \UHHHHHHHH are decoded; a backslash before
// anything else is an error, so that no text has two readings. A string
// without a backslash is itself.
func unescape(s string) (string, error) {
	if !strings.ContainsRune(s, '\\') {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		c := s[i]
		if c != '\\' {
			b.WriteByte(c)
			i++
			continue
		}
		if i+1 >= len(s) {
			return "", fmt.Errorf("a lone backslash at the end (write a backslash as \\\\)")
		}
		var n int // hex digits that follow
		switch s[i+1] {
		case '\\':
			b.WriteByte('\\')
		case 'n':
			b.WriteByte('\n')
		case 'r':
			b.WriteByte('\r')
		case 't':
			b.WriteByte('\t')
		case 'x':
			n = 2
		case 'u':
			n = 4
		case 'U':
			n = 8
		default:
			return "", fmt.Errorf("unknown escape \\%c (the escapes are \\\\, \\n, \\r, \\t, \\xHH, \\uHHHH, \\UHHHHHHHH; write a backslash as \\\\)", s[i+1])
		}
		if n == 0 {
			i += 2
			continue
		}
		if i+2+n > len(s) {
			return "", fmt.Errorf("short escape \\%c: want %d hex digits", s[i+1], n)
		}
		v, err := strconv.ParseUint(s[i+2:i+2+n], 16, 32)
		if err != nil {
			return "", fmt.Errorf("bad escape \\%s: want %d hex digits", s[i+1:i+2+n], n)
		}
		if n == 2 {
			b.WriteByte(byte(v))
		} else {
			if !utf8.ValidRune(rune(v)) {
				return "", fmt.Errorf("bad escape \\%s: not a Unicode character", s[i+1:i+2+n])
			}
			b.WriteRune(rune(v))
		}
		i += 2 + n
	}
	return b.String(), nil
}

// escapeJSON rewrites encoding/json's output so that it holds no character a
// terminal would act on: encoding/json escapes C0 controls and U+2028/U+2029
// but writes DEL, C1 controls, bidirectional overrides, zero-width and other
// format characters as they are. Each such rune becomes \uXXXX (a surrogate
// pair above U+FFFF), which a JSON reader decodes to the same string.
// Outside strings JSON is printable ASCII, so every rune rewritten is inside
// a string.
func escapeJSON(js []byte) []byte {
	plain := true
	for _, c := range js {
		if c >= 0x7f {
			plain = false
			break
		}
	}
	if plain {
		return js
	}
	out := make([]byte, 0, len(js)+16)
	for i := 0; i < len(js); {
		r, size := utf8.DecodeRune(js[i:])
		if r == 0x7f || r >= 0x80 && unsafeRune(r) {
			if r > 0xffff {
				r1, r2 := utf16.EncodeRune(r)
				out = fmt.Appendf(out, `\u%04x\u%04x`, r1, r2)
			} else {
				out = fmt.Appendf(out, `\u%04x`, r)
			}
		} else {
			out = append(out, js[i:i+size]...)
		}
		i += size
	}
	return out
}
