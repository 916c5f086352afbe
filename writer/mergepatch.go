package writer

import (
	"bytes"
	"encoding/json"
	"io"
)

// MergePatch applies an RFC 7386 JSON merge patch to doc and returns the
// result. Numbers keep their exact text. doc may be nil (absent).
func MergePatch(doc, patch []byte) ([]byte, error) {
	p, err := decodeJSON(patch)
	if err != nil {
		return nil, invalid("merge patch", "%v", err)
	}
	var target any
	if doc != nil {
		if target, err = decodeJSON(doc); err != nil {
			return nil, invalid("document", "%v", err)
		}
	}
	out, err := json.Marshal(mergeValue(target, p))
	if err != nil {
		return nil, invalid("merge patch", "%v", err)
	}
	return out, nil
}

func mergeValue(target, patch any) any {
	pm, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	tm, ok := target.(map[string]any)
	if !ok {
		tm = map[string]any{}
	}
	for k, v := range pm {
		if v == nil {
			delete(tm, k)
			continue
		}
		tm[k] = mergeValue(tm[k], v)
	}
	return tm
}

// decodeJSON decodes exactly one JSON value, keeping numbers as json.Number.
func decodeJSON(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errTrailing
	}
	return v, nil
}

var errTrailing = &InvalidError{Field: "JSON", Reason: "trailing data after the value"}
