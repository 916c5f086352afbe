package writer

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"

	"github.com/jackc/pgx/v5"
)

// preconditionHeaderError is a malformed If-Match or If-None-Match (400).
type preconditionHeaderError struct {
	header string
	reason string
}

func (e *preconditionHeaderError) Error() string {
	return fmt.Sprintf("malformed %s header: %s; expected * or a list of entity tags like \"3\"", e.header, e.reason)
}

// tagList is a parsed If-Match or If-None-Match: "*" or a list of entity
// tags. Only tags whose opaque value is a canonical decimal version can ever
// match; the others are kept out of the lists.
type tagList struct {
	present bool
	any     bool
	strong  []int64 // versions of strong tags
	weak    []int64 // versions of weak tags
}

// matchStrong is the strong comparison If-Match uses: W/"N" never matches.
func (t tagList) matchStrong(version int64) bool {
	return t.any || slices.Contains(t.strong, version)
}

// matchWeak is the weak comparison If-None-Match uses.
func (t tagList) matchWeak(version int64) bool {
	return t.any || slices.Contains(t.strong, version) || slices.Contains(t.weak, version)
}

type preconditions struct {
	ifMatch     tagList
	ifNoneMatch tagList
}

func (p preconditions) any() bool { return p.ifMatch.present || p.ifNoneMatch.present }

func parsePreconditions(h http.Header) (preconditions, error) {
	var p preconditions
	var err error
	if v, ok := h["If-Match"]; ok {
		if p.ifMatch, err = parseTagList("If-Match", v); err != nil {
			return p, err
		}
	}
	if v, ok := h["If-None-Match"]; ok {
		if p.ifNoneMatch, err = parseTagList("If-None-Match", v); err != nil {
			return p, err
		}
	}
	return p, nil
}

// parseTagList parses `"*" / #entity-tag` (RFC 9110 §13.1.1) over every
// line of the header.
func parseTagList(name string, lines []string) (tagList, error) {
	t := tagList{present: true}
	elems := 0
	for _, s := range lines {
		i := 0
		for {
			i = skipOWS(s, i)
			if i == len(s) {
				break
			}
			if s[i] == ',' {
				i++
				continue
			}
			if s[i] == '*' {
				t.any = true
				elems++
				i++
			} else {
				weak := false
				if len(s)-i >= 2 && s[i] == 'W' && s[i+1] == '/' {
					weak = true
					i += 2
				}
				if i == len(s) || s[i] != '"' {
					return t, &preconditionHeaderError{name, "an entity tag must be quoted"}
				}
				j := i + 1
				for j < len(s) && s[j] != '"' {
					if c := s[j]; c < 0x21 || c == 0x7f {
						return t, &preconditionHeaderError{name, "an entity tag holds a character it may not"}
					}
					j++
				}
				if j == len(s) {
					return t, &preconditionHeaderError{name, "an entity tag is not closed"}
				}
				if v, ok := parseVersion(s[i+1 : j]); ok {
					if weak {
						t.weak = append(t.weak, v)
					} else {
						t.strong = append(t.strong, v)
					}
				}
				elems++
				i = j + 1
			}
			i = skipOWS(s, i)
			if i < len(s) && s[i] != ',' {
				return t, &preconditionHeaderError{name, "entity tags must be separated by commas"}
			}
		}
	}
	switch {
	case elems == 0:
		return t, &preconditionHeaderError{name, "it is empty"}
	case t.any && elems > 1:
		return t, &preconditionHeaderError{name, "* must stand alone"}
	}
	return t, nil
}

func skipOWS(s string, i int) int {
	for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
		i++
	}
	return i
}

// parseVersion accepts the canonical decimal text of a positive version: an
// entity tag is compared as text, so "03" is not version 3.
func parseVersion(s string) (int64, bool) {
	if s == "" || s[0] == '0' || len(s) > 19 {
		return 0, false
	}
	v, err := strconv.ParseInt(s, 10, 64)
	return v, err == nil && v > 0
}

// lockVersionSQL reads the version of a live entity under its row lock, so a
// precondition the writer's conditions cannot express is evaluated against
// the state the write then changes.
const lockVersionSQL = `
SELECT version FROM entities
WHERE collection = $1 AND id = $2 AND NOT deleted
FOR UPDATE`

// withoutRead is conditions for the headers that need no read of the
// entity's version; ok is false for the others.
func (p preconditions) withoutRead(op string) (conds []Condition, ok bool, err error) {
	if !p.any() {
		return nil, true, nil
	}
	im, inm := p.ifMatch, p.ifNoneMatch
	switch {
	case im.present && !im.any && len(im.strong) == 0:
		return nil, true, ErrPrecondition // no tag can match
	case !inm.present && im.any:
		return []Condition{IfExists()}, true, nil
	case !inm.present && len(im.strong) == 1:
		return []Condition{IfMatch(im.strong[0])}, true, nil
	case !im.present && inm.any && op != opDelete:
		return []Condition{IfAbsent()}, true, nil
	case !im.present && !inm.any && len(inm.strong)+len(inm.weak) == 0:
		return nil, true, nil // no tag can match, so none fails
	}
	return nil, false, nil
}

// conditions turns the preconditions into the writer's conditions inside tx.
// The common forms map directly; a list of several tags, or If-None-Match
// with tags, is evaluated against the locked row and pinned to its version.
func (p preconditions) conditions(ctx context.Context, tx Tx, op, collection, id string) ([]Condition, error) {
	if conds, ok, err := p.withoutRead(op); ok {
		return conds, err
	}
	im, inm := p.ifMatch, p.ifNoneMatch
	var cur int64
	err := tx.QueryRow(ctx, lockVersionSQL, collection, id).Scan(&cur)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("read version of %s/%s: %w", collection, id, err)
	}
	exists := err == nil
	if im.present && (!exists || !im.matchStrong(cur)) {
		return nil, ErrPrecondition
	}
	if inm.present && exists && inm.matchWeak(cur) {
		return nil, ErrPrecondition
	}
	switch {
	case exists:
		return []Condition{IfMatch(cur)}, nil
	case op == opPut:
		return []Condition{IfAbsent()}, nil
	default:
		return nil, ErrNotFound
	}
}
