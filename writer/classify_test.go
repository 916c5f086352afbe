package writer

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
)

// Found by the consistency suite (internal/chaos, pg-reset): a connection
// reset under a transaction failed its COMMIT with "conn closed", which the
// API answered 500. Losing Postgres mid-transaction is an outage: 503.
func TestClassifyLostConnectionIsUnavailable(t *testing.T) {
	t.Parallel()
	reset := &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}
	for name, err := range map[string]error{
		"conn closed at commit": fmt.Errorf("commit: %w", pgconn.ErrConnClosed),
		"reset by peer":         fmt.Errorf("put chaos/k1: %w", reset),
		"unexpected EOF":        fmt.Errorf("insert outbox: %w", io.ErrUnexpectedEOF),
	} {
		require.ErrorIs(t, classify(err), ErrUnavailable, name)
	}
	app := errors.New("the application's own error")
	require.Equal(t, app, classify(app), "an application error is handed back as it is")
}
