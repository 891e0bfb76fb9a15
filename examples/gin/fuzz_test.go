package main

// Fuzz target for the decoding of POST /orders bodies, which come from any
// client (issue 9 item 14). The seeds (f.Add and testdata/fuzz/) run as
// ordinary tests; fuzz with
//
//	go test -run '^$' -fuzz '^FuzzDecodeOrderRequest$' -fuzztime 5m -parallel 1 ./examples/gin

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// acceptable reports whether an order with this item and quantity is one
// the API must accept: printable text (no control or format characters, no
// U+FFFD, which stands for bytes that were not text), not blank, at most
// maxItemLen characters, and a quantity in range.
func acceptable(item string, quantity int) bool {
	if !utf8.ValidString(item) || quantity < 1 || quantity > maxQuantity {
		return false
	}
	for _, r := range item {
		if !unicode.IsPrint(r) || r == utf8.RuneError {
			return false
		}
	}
	t := trimItem(item)
	return t != "" && utf8.RuneCountInString(t) <= maxItemLen
}

// orderBody spells an order as a client may: any key order, whitespace,
// escaped or literal non-ASCII.
func orderBody(item string, quantity int, shape uint8) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(shape&1 == 0)
	_ = enc.Encode(item)
	quoted := strings.TrimSuffix(b.String(), "\n")
	if shape&2 != 0 {
		quoted = strings.Trim(strings.TrimSpace(string(asciiJSON(item))), "\n")
	}
	q, _ := json.Marshal(quantity)
	ws := "" // JSON whitespace around every token, not inside the strings
	if shape&8 != 0 {
		ws = "\n\t \r"
	}
	fi, fq := ws+`"item"`+ws+":"+ws+quoted+ws, ws+`"quantity"`+ws+":"+ws+string(q)+ws
	s := ws + "{" + fi + "," + fq + "}" + ws
	if shape&4 != 0 {
		s = ws + "{" + fq + "," + fi + "}" + ws
	}
	return []byte(s)
}

// asciiJSON quotes s with every non-ASCII rune as a \u escape (surrogate
// pairs above the BMP), as some clients send.
func asciiJSON(s string) []byte {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r >= 0x7f:
			if r > 0xffff {
				r1, r2 := utf16Pair(r)
				b.WriteString(jsonEscape(r1))
				b.WriteString(jsonEscape(r2))
			} else {
				b.WriteString(jsonEscape(r))
			}
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return []byte(b.String())
}

func utf16Pair(r rune) (rune, rune) {
	r -= 0x10000
	return 0xd800 + (r>>10)&0x3ff, 0xdc00 + r&0x3ff
}

func jsonEscape(r rune) string {
	const hex = "0123456789abcdef"
	return `\u` + string([]byte{hex[r>>12&0xf], hex[r>>8&0xf], hex[r>>4&0xf], hex[r&0xf]})
}

// FuzzDecodeOrderRequest checks that decodeOrderRequest never panics; that
// whatever it accepts is one valid JSON object holding a valid order, which
// re-encodes to a body it accepts as the same order; and that every
// acceptable order, however spelled, is accepted as itself.
func FuzzDecodeOrderRequest(f *testing.F) {
	for _, s := range []string{
		`{"item": "book", "quantity": 2}`,
		`{"quantity": 1000, "item": "  tea  "}`,
		`{"item": "livre à 2 €, 本 📚", "quantity": 1}`,
		`{"item": "\u00e9\ud83d\udcda", "quantity": 1}`,
		`{"item": "book", "quantity": 2, "extra": true}`,
		`{"item": "book", "quantity": 2.0}`,
		`{"item": "book", "quantity": 1e2}`,
		`{"item": "book", "quantity": "2"}`,
		`{"item": "book", "quantity": 9223372036854775808}`,
		`{"item": "book", "quantity": -1}`,
		`{"item": "book", "quantity": 1001}`,
		`{"item": "", "quantity": 1}`,
		`{"item": "   ", "quantity": 1}`,
		`{"item": 5, "quantity": 1}`,
		`{"item": null, "quantity": null}`,
		`{"item": "book", "quantity": 2} {"item": "pen", "quantity": 1}`,
		`{"item": "book", "quantity": 2} x`,
		`{"item": "book", "quantity": 2}` + "\n",
		`{"item": "book", "item": "pen", "quantity": 2}`,
		`{"ITEM": "book", "Quantity": 2}`,
		`{"item": "book", "quantity": 2`,
		`{"item": "bo`,
		`[{"item": "book", "quantity": 2}]`,
		`"book"`,
		`null`,
		``,
		`   `,
		`{}`,
		`{"item": "` + strings.Repeat("é", maxItemLen) + `", "quantity": 1}`,
		`{"item": "` + strings.Repeat("é", maxItemLen+1) + `", "quantity": 1}`,
		"\xef\xbb\xbf{\"item\": \"book\", \"quantity\": 2}",
		// Fuzz finding F2 (fixed in 0fffde8): a stray "]" or "}" after the
		// object was accepted.
		`{"item": "book", "quantity": 2}]`,
		`{"item": "book", "quantity": 2}}`,
		`{"item": "book", "quantity": 2} ]`,
		// Text that is not text (issue 9 item 13, fixed in 0fffde8).
		"{\"item\": \"bo\xffok\", \"quantity\": 1}",
		`{"item": "bo\ud800ok", "quantity": 1}`,
		`{"item": "book\u0000", "quantity": 1}`,
		`{"item": "book\u007f", "quantity": 1}`,
	} {
		f.Add([]byte(s), "book", 2, uint8(0))
	}
	for _, o := range []struct {
		item     string
		quantity int
	}{
		{"book", 1}, {" spaced out ", 1000}, {`quote " and \ backslash`, 3}, {"<b>&amp;</b>", 4},
		{"本 📚 \u2028", 5}, {",", 1000}, {"é", 0}, {"tab\there", 1}, {"zero\u200bwidth", 1}, {"\u00a0", 1},
	} {
		for _, shape := range []uint8{0, 3, 12} {
			f.Add([]byte(nil), o.item, o.quantity, shape)
		}
	}
	f.Fuzz(func(t *testing.T, body []byte, item string, quantity int, shape uint8) {
		checkAccepted := func(body []byte, req OrderRequest) {
			t.Helper()
			if err := req.validate(); err != nil {
				t.Fatalf("decodeOrderRequest(%q) accepted %+v, which is not valid: %v", body, req, err)
			}
			if !json.Valid(body) {
				t.Fatalf("decodeOrderRequest(%q) accepted %+v; the body is not JSON", body, req)
			}
			var obj map[string]json.RawMessage
			if err := json.Unmarshal(body, &obj); err != nil {
				t.Fatalf("decodeOrderRequest(%q) accepted %+v; the body is not a JSON object: %v", body, req, err)
			}
			if !utf8.Valid(body) {
				t.Fatalf("decodeOrderRequest(%q) accepted %+v; the body is not UTF-8", body, req)
			}
			if strings.Contains(req.Item, "\uFFFD") && !bytes.Contains(body, []byte("\uFFFD")) && !bytes.Contains(bytes.ToLower(body), []byte(`\ufffd`)) {
				t.Fatalf("decodeOrderRequest(%q) accepted item %q: U+FFFD stands for something that was not text", body, req.Item)
			}
			if strings.ContainsFunc(req.Item, unicode.IsControl) {
				t.Fatalf("decodeOrderRequest(%q) accepted item %q with a control character", body, req.Item)
			}
			// Re-encoded, it is accepted as the same order.
			again, err := json.Marshal(req)
			if err != nil {
				t.Fatalf("order %+v does not encode: %v", req, err)
			}
			back, err := decodeOrderRequest(bytes.NewReader(again))
			if err != nil || back != req {
				t.Fatalf("decodeOrderRequest(%q) = %+v, re-encoded as %q, decodes to %+v, %v", body, req, again, back, err)
			}
			var o Order
			if err := json.Unmarshal(mustMarshal(t, Order{ID: "ord_1", Item: req.Item, Quantity: req.Quantity}), &o); err != nil ||
				o.Item != req.Item || o.Quantity != req.Quantity {
				t.Fatalf("order %+v published as JSON reads back as %+v, %v", req, o, err)
			}
		}

		// Any body: an order or an error, never a panic.
		if req, err := decodeOrderRequest(bytes.NewReader(body)); err == nil {
			checkAccepted(body, req)
		} else if msg := err.Error(); msg == "" || strings.Contains(msg, "main.") || strings.Contains(msg, "OrderRequest") {
			t.Fatalf("decodeOrderRequest(%q) error %q; want a text for the client, without Go names", body, msg)
		}

		// An acceptable order, however spelled, is accepted as itself.
		if !acceptable(item, quantity) {
			return
		}
		b := orderBody(item, quantity, shape)
		if len(b) > maxBodySize {
			return
		}
		req, err := decodeOrderRequest(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("decodeOrderRequest(%q) = %v; want the order (item %q, quantity %d) accepted", b, err, item, quantity)
		}
		if want := trimItem(item); req.Item != want || req.Quantity != quantity {
			t.Fatalf("decodeOrderRequest(%q) = %+v; want item %q (trimmed), quantity %d", b, req, want, quantity)
		}
		checkAccepted(b, req)
	})
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
