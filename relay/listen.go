package relay

import (
	"context"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/writethrough/writethrough/outbox"
)

// listen keeps a dedicated connection LISTENing on "<schema>_outbox" and
// wakes the worker on every notification, for the partitions it names.
// conn is the connection Start opened before the worker's first claim (nil
// if that failed), so nothing committed in between goes unannounced. After
// a reconnect it listens again and wakes the worker once for every
// partition, since notifications sent while it was away are lost; the
// worker's poll interval covers the gap meanwhile.
func (r *Relay) listen(ctx context.Context, conn *pgx.Conn) {
	wait := 100 * time.Millisecond
	for ctx.Err() == nil {
		var err error
		if conn == nil {
			if conn, err = r.listenConn(ctx); err == nil {
				r.wakeup()
			}
		}
		if conn != nil {
			err = r.waitNotifications(ctx, conn)
			closeConn(conn)
			conn = nil
		}
		if ctx.Err() != nil {
			return
		}
		r.log.Warn("outbox listener lost its connection", slog.String("error", err.Error()))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// listenConn opens a connection that LISTENs on the outbox channel.
func (r *Relay) listenConn(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, r.pool.Config().ConnConfig.Copy())
	if err != nil {
		return nil, err
	}
	var schema string
	if err := conn.QueryRow(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
		closeConn(conn)
		return nil, err
	}
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{schema + "_outbox"}.Sanitize()); err != nil {
		closeConn(conn)
		return nil, err
	}
	return conn, nil
}

func (r *Relay) waitNotifications(ctx context.Context, conn *pgx.Conn) error {
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		r.wakeFor(outbox.ParsePartSet(n.Payload))
	}
}

func closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}
