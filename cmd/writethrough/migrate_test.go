package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/writethrough/writethrough/internal/testenv"
	"github.com/writethrough/writethrough/migrations"
)

// migrateBundle runs migrate commands against a schema of its own that
// does not exist yet.
type migrateBundle struct {
	schema string
	conn   *pgx.Conn
	files  []string
}

func setupMigrate(t *testing.T) *migrateBundle {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, testenv.DatabaseURL())
	require.NoError(t, err)
	m := &migrateBundle{schema: testenv.Name("wt_m"), conn: conn}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{m.schema}.Sanitize()+" CASCADE")
		conn.Close(ctx)
	})
	m.files, err = fs.Glob(migrations.FS(), "*.sql")
	require.NoError(t, err)
	require.NotEmpty(t, m.files)
	return m
}

func (m *migrateBundle) cmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	vars := map[string]string{"DATABASE_URL": testenv.DatabaseURL(), "WT_DB_SCHEMA": m.schema, "WT_LOG_LEVEL": "warn"}
	var out, errOut bytes.Buffer
	code := run(context.Background(), append([]string{"migrate"}, args...), func(k string) string { return vars[k] }, &out, &errOut)
	return code, out.String(), errOut.String()
}

// schemaExists reports whether the test's schema is in the database.
func (m *migrateBundle) schemaExists(t *testing.T) bool {
	t.Helper()
	var n int
	require.NoError(t, m.conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_namespace WHERE nspname = $1`, m.schema).Scan(&n))
	return n > 0
}

type migrateRow struct {
	Version int64  `json:"version"`
	Name    string `json:"name"`
	Applied bool   `json:"applied"`
}

type migrateOutput struct {
	Schema     string       `json:"schema"`
	From       int64        `json:"from"`
	To         int64        `json:"to"`
	Applied    []migrateRow `json:"applied"`
	RolledBack []migrateRow `json:"rolled_back"`
}

// TestMigrateStatusChangesNothing: status on a schema that does not exist
// reports every migration pending and creates neither the schema nor the
// version table.
func TestMigrateStatusChangesNothing(t *testing.T) {
	t.Parallel()
	m := setupMigrate(t)

	code, out, errOut := m.cmd(t, "status")
	require.Equal(t, exitOK, code, errOut)
	require.Equal(t, len(m.files), strings.Count(out, "pending"), out)
	require.Contains(t, out, fmt.Sprintf("0 of %d migrations applied", len(m.files)))
	require.False(t, m.schemaExists(t), "migrate status created the schema")

	code, out, errOut = m.cmd(t, "status", "--json")
	require.Equal(t, exitOK, code, errOut)
	var rows []migrateRow
	require.NoError(t, json.Unmarshal([]byte(out), &rows), out)
	require.Len(t, rows, len(m.files))
	for i, r := range rows {
		require.Equal(t, m.files[i], r.Name)
		require.False(t, r.Applied)
	}
	require.False(t, m.schemaExists(t), "migrate status --json created the schema")

	// An existing schema without goose's table gets no table either.
	_, err := m.conn.Exec(context.Background(), "CREATE SCHEMA "+pgx.Identifier{m.schema}.Sanitize())
	require.NoError(t, err)
	code, out, errOut = m.cmd(t, "status")
	require.Equal(t, exitOK, code, errOut)
	require.Equal(t, len(m.files), strings.Count(out, "pending"), out)
	var table *string
	require.NoError(t, m.conn.QueryRow(context.Background(), `SELECT to_regclass($1)::text`, pgx.Identifier{m.schema, "goose_db_version"}.Sanitize()).Scan(&table))
	require.Nil(t, table, "migrate status created goose's version table")

	// After up, status says applied.
	code, _, errOut = m.cmd(t, "up")
	require.Equal(t, exitOK, code, errOut)
	code, out, _ = m.cmd(t, "status", "--json")
	require.Equal(t, exitOK, code)
	require.NoError(t, json.Unmarshal([]byte(out), &rows), out)
	for _, r := range rows {
		require.True(t, r.Applied, r.Name)
	}
}

// TestMigrateUpDown: down with nothing applied is not a failure, and up and
// down print a JSON result with --json.
func TestMigrateUpDown(t *testing.T) {
	t.Parallel()
	m := setupMigrate(t)
	n := int64(len(m.files))

	code, out, errOut := m.cmd(t, "down")
	require.Equal(t, exitOK, code, "stdout: %s\nstderr: %s", out, errOut)
	require.Contains(t, out, "nothing to roll back")
	require.False(t, m.schemaExists(t), "migrate down created the schema")
	var res migrateOutput
	code, out, errOut = m.cmd(t, "down", "--json")
	require.Equal(t, exitOK, code, errOut)
	require.NoError(t, json.Unmarshal([]byte(out), &res), out)
	require.Equal(t, migrateOutput{Schema: m.schema, RolledBack: []migrateRow{}}, res)

	code, out, errOut = m.cmd(t, "up", "--json")
	require.Equal(t, exitOK, code, errOut)
	res = migrateOutput{}
	require.NoError(t, json.Unmarshal([]byte(out), &res), out)
	require.Equal(t, m.schema, res.Schema)
	require.Zero(t, res.From)
	require.Equal(t, n, res.To)
	require.Len(t, res.Applied, len(m.files))
	for i, r := range res.Applied {
		require.Equal(t, int64(i+1), r.Version)
		require.Equal(t, m.files[i], r.Name)
	}

	code, out, _ = m.cmd(t, "up", "--json")
	require.Equal(t, exitOK, code)
	res = migrateOutput{}
	require.NoError(t, json.Unmarshal([]byte(out), &res), out)
	require.Equal(t, migrateOutput{Schema: m.schema, From: n, To: n, Applied: []migrateRow{}}, res)

	code, out, _ = m.cmd(t, "down", "--json")
	require.Equal(t, exitOK, code)
	res = migrateOutput{}
	require.NoError(t, json.Unmarshal([]byte(out), &res), out)
	require.Equal(t, migrateOutput{Schema: m.schema, From: n, To: n - 1, RolledBack: []migrateRow{{Version: n, Name: m.files[n-1]}}}, res)

	for v := n - 1; v > 0; v-- {
		code, out, errOut = m.cmd(t, "down")
		require.Equal(t, exitOK, code, errOut)
		require.Contains(t, out, "rolled back "+m.files[v-1])
	}
	code, out, errOut = m.cmd(t, "down")
	require.Equal(t, exitOK, code, "stdout: %s\nstderr: %s", out, errOut)
	require.Contains(t, out, "nothing to roll back")
}
