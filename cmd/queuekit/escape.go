package main

import (
	"fmt"
	"strings"
	"unicode"
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
