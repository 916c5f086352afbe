package writer

import (
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
)

var (
	// ErrNotFound: the entity does not exist or is deleted.
	ErrNotFound = errors.New("entity not found")
	// ErrPrecondition: an If-Match / If-None-Match condition failed.
	ErrPrecondition = errors.New("precondition failed")
	// ErrConflict: the transaction still conflicted after the writer's own
	// retries. Nothing was committed.
	ErrConflict = errors.New("transaction conflict persisted after retries")
	// ErrUnavailable: Postgres could not be reached or failed. Nothing was
	// committed (or the outcome of a commit is unknown; the call may be
	// retried, ideally with an idempotency key).
	ErrUnavailable = errors.New("postgres unavailable")
)

// InvalidError reports input that can never succeed: a bad collection name,
// id, JSON document or merge patch.
type InvalidError struct {
	Field  string
	Reason string
}

func (e *InvalidError) Error() string { return fmt.Sprintf("invalid %s: %s", e.Field, e.Reason) }

func invalid(field, format string, args ...any) error {
	return &InvalidError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// IsInvalid reports whether err is an InvalidError.
func IsInvalid(err error) bool {
	var ie *InvalidError
	return errors.As(err, &ie)
}

// IsRetryable reports whether the whole transaction may be run again: a
// serialization failure or a deadlock.
func IsRetryable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "40001", "40P01":
			return true
		}
	}
	return false
}

// dataError reports a Postgres data exception (class 22), e.g. a JSON string
// with \u0000 that jsonb rejects: the client's input, not an outage.
func dataError(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && len(pgErr.Code) == 5 && pgErr.Code[:2] == "22" {
		return invalid("data", "%s", pgErr.Message)
	}
	return nil
}
