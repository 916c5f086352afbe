package writer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"testing"
	"unicode/utf8"
)

var collectionPattern = regexp.MustCompile(`^[a-z][a-z0-9_]{0,62}$`)

func FuzzValidateCollection(f *testing.F) {
	for _, s := range []string{"users", "a", "_batch", "Users", "a-b", "a:b", "a1_2", "", "9a"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, c string) {
		err := ValidateCollection(c)
		if want := collectionPattern.MatchString(c); (err == nil) != want {
			t.Fatalf("ValidateCollection(%q) = %v, want valid=%v", c, err, want)
		}
		if err != nil && !IsInvalid(err) {
			t.Fatalf("ValidateCollection(%q) returned a %T, not an InvalidError", c, err)
		}
	})
}

// escapeAll percent-encodes every byte but ASCII letters and digits, so no
// id can form a dot segment or a slash in the path.
func escapeAll(s string) string {
	const hex = "0123456789ABCDEF"
	var b []byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			b = append(b, c)
			continue
		}
		b = append(b, '%', hex[c>>4], hex[c&15])
	}
	return string(b)
}

func FuzzValidateID(f *testing.F) {
	for _, s := range []string{"42", "a/b", "..", ".", "%2F", "ünï", "a\x00b", "a\x7fb", "\u0085", "\xff", " ", ""} {
		f.Add(s)
	}
	mux := http.NewServeMux()
	var got string
	mux.HandleFunc("GET "+entityPattern, func(_ http.ResponseWriter, r *http.Request) {
		c, id, err := entityKey(r)
		if err != nil || c != "c" {
			got = fmt.Sprintf("collection %q, error %v", c, err)
			return
		}
		got = id
	})
	f.Fuzz(func(t *testing.T, id string) {
		err := ValidateID(id)
		want := len(id) >= 1 && len(id) <= MaxIDBytes && utf8.ValidString(id)
		for _, r := range id {
			if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
				want = false
			}
		}
		if (err == nil) != want {
			t.Fatalf("ValidateID(%q) = %v, want valid=%v", id, err, want)
		}
		if err != nil {
			if !IsInvalid(err) {
				t.Fatalf("ValidateID(%q) returned a %T, not an InvalidError", id, err)
			}
			return
		}
		// Every valid id, percent-encoded, reaches the handler intact.
		got = "\x00unset"
		mux.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/v1/c/"+escapeAll(id), nil))
		if got != id {
			t.Fatalf("id %q arrived as %q", id, got)
		}
	})
}

func decodeNumbers(t *testing.T, b []byte) any {
	t.Helper()
	v, err := decodeJSON(b)
	if err != nil {
		t.Fatalf("not one JSON value: %v: %q", err, b)
	}
	return v
}

func FuzzMergePatch(f *testing.F) {
	for _, s := range [][2]string{
		{`{"a":"b"}`, `{"a":"c"}`},
		{`{"a":"b"}`, `{"b":"c"}`},
		{`{"a":"b"}`, `{"a":null}`},
		{`{"a":"b","b":"c"}`, `{"a":null}`},
		{`{"a":["b"]}`, `{"a":"c"}`},
		{`{"a":"c"}`, `{"a":["b"]}`},
		{`{"a":{"b":"c"}}`, `{"a":{"b":"d","c":null}}`},
		{`{"a":[{"b":"c"}]}`, `{"a":[1]}`},
		{`["a","b"]`, `["c","d"]`},
		{`{"a":"b"}`, `["c"]`},
		{`{"a":"foo"}`, `null`},
		{`{"a":"foo"}`, `"bar"`},
		{`{"e":null}`, `{"a":1}`},
		{`[1,2]`, `{"a":"b","c":null}`},
		{``, `{"a":{"bb":{"ccc":null}}}`},
		{`{"n":1.50e+10}`, `{"m":12345678901234567890}`},
		{`{}`, `{"a":1} x`},
		{`{`, `{}`},
	} {
		f.Add([]byte(s[0]), []byte(s[1]))
	}
	f.Fuzz(func(t *testing.T, doc, patch []byte) {
		if len(doc) == 0 {
			doc = nil
		}
		out, err := MergePatch(doc, patch)
		if err != nil {
			if !IsInvalid(err) {
				t.Fatalf("MergePatch error is a %T, not an InvalidError: %v", err, err)
			}
			return
		}
		res := decodeNumbers(t, out)
		p := decodeNumbers(t, patch)
		if _, isObject := p.(map[string]any); !isObject && !reflect.DeepEqual(res, p) {
			t.Fatalf("a patch that is not an object replaces the document: got %s for patch %s", out, patch)
		}
		// RFC 7386 patches are idempotent.
		again, err := MergePatch(out, patch)
		if err != nil {
			t.Fatalf("applying the patch to its own result: %v", err)
		}
		if !reflect.DeepEqual(decodeNumbers(t, again), res) {
			t.Fatalf("patch not idempotent: %s then %s", out, again)
		}
	})
}

func FuzzDecodeBatch(f *testing.F) {
	for _, s := range []string{
		`{"ops":[{"op":"put","collection":"users","id":"1","data":{"a":1}}]}`,
		`{"ops":[{"op":"patch","collection":"users","id":"a/b","data":{"a":null},"if_match":3},{"op":"delete","collection":"users","id":"x"}]}`,
		`{"ops":[{"op":"put","collection":"users","id":"1","data":null}]}`,
		`{"ops":[{"op":"delete","collection":"users","id":"1","data":{}}]}`,
		`{"ops":[{"op":"put","collection":"_x","id":"1","data":1}]}`,
		`{"ops":[{"op":"put","collection":"x","id":"\u0001","data":1}]}`,
		`{"ops":[{"op":"upsert","collection":"x","id":"1","data":1}]}`,
		`{"ops":[{"op":"delete","collection":"x","id":"1","if_match":0}]}`,
		`{"ops":[{"op":"delete","collection":"x","id":"1","if_match":"1"}]}`,
		`{"ops":[{"OP":"delete","Collection":"x","ID":"1"}]}`,
		`{"ops":[],"extra":1}`,
		`{"ops":[]}`,
		`{"ops":null}`,
		`{"ops":{}}`,
		`[]`,
		`{} {}`,
		`{"ops":[`,
		``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		ops, err := decodeBatch(body)
		if err != nil {
			if p := problemFor(err); p.status != http.StatusBadRequest {
				t.Fatalf("a bad batch answers %d, not 400: %v", p.status, err)
			}
			return
		}
		if len(ops) == 0 || len(ops) > MaxBatchOps {
			t.Fatalf("decoded %d ops", len(ops))
		}
		for i := range ops {
			if err := ops[i].check(); err != nil {
				t.Fatalf("ops[%d] decoded but does not check: %v", i, err)
			}
			if ops[i].Data != nil && !json.Valid(ops[i].Data) {
				t.Fatalf("ops[%d] data is not JSON: %q", i, ops[i].Data)
			}
		}
		// Encoding the ops again decodes to the same ops.
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(struct {
			Ops []batchOp `json:"ops"`
		}{ops}); err != nil {
			t.Fatalf("encode: %v", err)
		}
		again, err := decodeBatch(buf.Bytes())
		if err != nil {
			t.Fatalf("re-encoded batch does not decode: %v: %s", err, buf.Bytes())
		}
		for i := range ops {
			var c bytes.Buffer
			if ops[i].Data != nil {
				_ = json.Compact(&c, ops[i].Data)
				ops[i].Data = c.Bytes()
			}
		}
		if !reflect.DeepEqual(ops, again) {
			t.Fatalf("round trip changed the ops:\n%+v\n%+v", ops, again)
		}
	})
}

func FuzzPreconditionHeader(f *testing.F) {
	for _, s := range []string{`"1"`, `W/"2"`, `*`, `"1", W/"2" , "x"`, `1`, `"1`, `,`, ``, `* , "1"`, `"a b"`, `W/`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		tl, err := parseTagList("If-Match", []string{v})
		if err != nil {
			if p := problemFor(err); p.status != http.StatusBadRequest {
				t.Fatalf("a malformed header answers %d, not 400: %v", p.status, err)
			}
			return
		}
		for _, n := range append(tl.strong, tl.weak...) {
			if n < 1 {
				t.Fatalf("parsed version %d from %q", n, v)
			}
		}
		if tl.any && (len(tl.strong) > 0 || len(tl.weak) > 0) {
			t.Fatalf("* with tags parsed from %q", v)
		}
	})
}
