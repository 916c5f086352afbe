package writer

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestProblemFor(t *testing.T) {
	t.Parallel()
	secret := errors.New(`ERROR: relation "entities" ... postgres://u:pw@db:5432/x`)
	cases := []struct {
		err        error
		status     int
		retryAfter bool
	}{
		{invalid("id", "bad"), http.StatusBadRequest, false},
		{&opError{index: 3, err: invalid("op", "bad")}, http.StatusBadRequest, false},
		{&http.MaxBytesError{Limit: 10}, http.StatusRequestEntityTooLarge, false},
		{&contentTypeError{method: "PUT", got: "text/plain", want: "application/json"}, http.StatusUnsupportedMediaType, false},
		{&preconditionHeaderError{"If-Match", "bad"}, http.StatusBadRequest, false},
		{&keyError{"users", "1", ErrNotFound}, http.StatusNotFound, false},
		{ErrPrecondition, http.StatusPreconditionFailed, false},
		{errKeyInFlight, http.StatusConflict, false},
		{errClaimLost, http.StatusConflict, false},
		{errKeyReused, http.StatusUnprocessableEntity, false},
		{fmt.Errorf("%w: %w", ErrConflict, secret), http.StatusServiceUnavailable, true},
		{fmt.Errorf("%w: %w", ErrUnavailable, secret), http.StatusServiceUnavailable, true},
		{fmt.Errorf("begin: %w", context.DeadlineExceeded), http.StatusServiceUnavailable, true},
		{secret, http.StatusInternalServerError, false},
	}
	for _, c := range cases {
		p := problemFor(c.err)
		require.Equal(t, c.status, p.status, c.err.Error())
		require.Equal(t, c.retryAfter, p.retryAfter != "", c.err.Error())
		require.NotContains(t, string(p.body()), "postgres://", c.err.Error())
		require.NotContains(t, string(p.body()), "relation", c.err.Error())
	}
	require.Contains(t, problemFor(&opError{index: 3, err: &keyError{"users", "x", ErrNotFound}}).detail, "ops[3]: users/\"x\" does not exist")
}

func TestProblemBodyIsJSON(t *testing.T) {
	t.Parallel()
	p := problem{status: 400, typ: "invalid", title: "Bad Request", detail: "id \"\x00\x1f<&>\u2028\xff\" is bad"}
	require.JSONEq(t, `{"type":"urn:writethrough:problem:invalid","title":"Bad Request","status":400,"detail":"id \"\u0000\u001f<&>\u2028\ufffd\" is bad"}`, string(p.body()))
}
