package writer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/writethrough/writethrough/outbox"
)

// MaxBatchOps is the most operations one POST /v1/_batch may hold.
const MaxBatchOps = 1000

// batchOp is one operation of a batch:
// {"op":"put"|"patch"|"delete","collection","id","data"?,"if_match"?:N}.
type batchOp struct {
	Op         string          `json:"op"`
	Collection string          `json:"collection"`
	ID         string          `json:"id"`
	Data       json.RawMessage `json:"data,omitempty"`
	IfMatch    *int64          `json:"if_match,omitempty"`
}

// batchError is a batch body that is not a valid batch (400).
type batchError struct{ msg string }

func (e *batchError) Error() string { return e.msg }

func badBatch(format string, args ...any) error {
	return &batchError{msg: fmt.Sprintf(format, args...)}
}

// decodeBatch decodes and checks a batch body: one JSON object holding
// "ops", 1 to MaxBatchOps operations, each with a known op, a valid
// collection and id, data for put and patch and none for delete, and a
// positive if_match. A bad operation's error names its index.
func decodeBatch(body []byte) ([]batchOp, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var req struct {
		Ops *[]batchOp `json:"ops"`
	}
	if err := dec.Decode(&req); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, badBatch(`the body is empty; send {"ops":[...]}`)
		}
		return nil, badBatch("the body is not a valid batch: %s", jsonErrorText(err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, badBatch("the body holds data after the batch object")
	}
	if req.Ops == nil {
		return nil, badBatch(`the body must be an object {"ops":[...]}`)
	}
	ops := *req.Ops
	switch {
	case len(ops) == 0:
		return nil, badBatch("ops is empty; a batch holds 1 to %d operations", MaxBatchOps)
	case len(ops) > MaxBatchOps:
		return nil, badBatch("ops holds %d operations; a batch holds at most %d", len(ops), MaxBatchOps)
	}
	for i := range ops {
		if err := ops[i].check(); err != nil {
			return nil, &opError{index: i, err: err}
		}
	}
	return ops, nil
}

func (o *batchOp) check() error {
	switch o.Op {
	case opPut, opPatch:
		if o.Data == nil {
			return invalid("data", "%s needs data", o.Op)
		}
	case opDelete:
		if o.Data != nil {
			return invalid("data", "delete takes no data")
		}
	case "":
		return invalid("op", `missing; use "put", "patch" or "delete"`)
	default:
		return invalid("op", `%q is not "put", "patch" or "delete"`, o.Op)
	}
	if o.IfMatch != nil && *o.IfMatch < 1 {
		return invalid("if_match", "must be a version, 1 or more")
	}
	return validateKey(o.Collection, o.ID)
}

// jsonErrorText describes a decoding error without Go type names.
func jsonErrorText(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("invalid JSON at byte %d: %s", se.Offset, se.Error())
	case errors.As(err, &te):
		if te.Field == "" {
			return fmt.Sprintf("expected an object, got a JSON %s", te.Value)
		}
		return fmt.Sprintf("%s must not be a JSON %s", te.Field, te.Value)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "the JSON ends early"
	}
	return err.Error()
}

// batch prepares POST /v1/_batch: every operation in order, in one
// transaction, so all commit or none.
func (h *Handler) batch(ctx context.Context, q writeRequest) (func(CacheWrite) answer, func(Tx) error, error) {
	if err := checkContentType(opBatch, q.header); err != nil {
		return nil, nil, err
	}
	ops, err := decodeBatch(q.body)
	if err != nil {
		return nil, nil, err
	}
	changes := make([]Change, 0, len(ops))
	work := func(tx Tx) error {
		changes = changes[:0]
		for i := range ops {
			op := &ops[i]
			var conds []Condition
			if op.IfMatch != nil {
				conds = []Condition{IfMatch(*op.IfMatch)}
			}
			var ch Change
			var err error
			switch op.Op {
			case opPut:
				ch, err = tx.Put(ctx, op.Collection, op.ID, op.Data, conds...)
			case opPatch:
				ch, err = tx.Patch(ctx, op.Collection, op.ID, op.Data, conds...)
			case opDelete:
				ch, err = tx.Delete(ctx, op.Collection, op.ID, conds...)
			}
			if err != nil {
				return &opError{index: i, err: &keyError{collection: op.Collection, id: op.ID, err: err}}
			}
			changes = append(changes, ch)
		}
		return nil
	}
	build := func(cw CacheWrite) answer {
		b := make([]byte, 0, 64+len(changes)*128)
		b = append(b, `{"results":[`...)
		for i := range changes {
			ch := &changes[i]
			if i > 0 {
				b = append(b, ',')
			}
			if ch.Deleted {
				b = append(b, `{"collection":`...)
				b = appendJSONText(b, ch.Collection)
				b = append(b, `,"id":`...)
				b = appendJSONText(b, ch.ID)
				b = append(b, `,"version":`...)
				b = strconv.AppendInt(b, ch.Version, 10)
				b = append(b, `,"deleted":true}`...)
				continue
			}
			b = outbox.AppendEntity(b, ch.Collection, ch.ID, ch.Version, ch.Data, outbox.FormatTime(ch.UpdatedAt))
		}
		b = append(b, `],"cache_write":"`...)
		b = append(b, cw...)
		b = append(b, `"}`...)
		return answer{status: http.StatusOK, contentType: "application/json", cacheWrite: cw, body: b}
	}
	return build, work, nil
}
