// Package migrations holds the numbered SQL migrations of writethrough's
// schema, embedded in the binary, and applies them with goose.
//
// Every table is created in the schema named by WT_DB_SCHEMA: the migrator
// sets search_path to it (Up creates it), so the SQL files never name a
// schema and an application's own tables can share the database.
package migrations

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"regexp"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
)

//go:embed *.sql
var files embed.FS

// FS returns the embedded migration files.
func FS() fs.FS { return files }

var schemaName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// ErrBadSchema reports a schema name that is not a plain lower-case identifier.
var ErrBadSchema = errors.New("schema name must match ^[a-z_][a-z0-9_]{0,62}$")

// ErrNotMigrated reports a database whose schema is behind the binary.
var ErrNotMigrated = errors.New("database schema is not migrated: run `writethrough migrate up`")

// ValidSchema reports whether name can be used as WT_DB_SCHEMA.
func ValidSchema(name string) error {
	if !schemaName.MatchString(name) {
		return fmt.Errorf("%q: %w", name, ErrBadSchema)
	}
	return nil
}

// ErrNothingToRollBack reports a Down with no migration applied.
var ErrNothingToRollBack = errors.New("no migration is applied")

// Migrator applies the embedded migrations to one schema.
type Migrator struct {
	db       *sql.DB
	schema   string
	provider *goose.Provider
}

// Open connects to databaseURL with search_path set to schema. It changes
// nothing in the database: Up creates the schema when it applies the first
// migration. Close the Migrator when done.
func Open(ctx context.Context, databaseURL, schema string) (*Migrator, error) {
	if err := ValidSchema(schema); err != nil {
		return nil, err
	}
	cfg, err := pgx.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	cfg.RuntimeParams["search_path"] = schema
	db := stdlib.OpenDB(*cfg)
	p, err := goose.NewProvider(goose.DialectPostgres, db, files)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("load migrations: %w", err)
	}
	return &Migrator{db: db, schema: schema, provider: p}, nil
}

// Close releases the connection.
func (m *Migrator) Close() error { return m.db.Close() }

// versioned reports whether goose's version table exists in the schema.
// goose creates that table (and fails on a missing schema) in every call
// it serves, so the read-only calls ask first.
func (m *Migrator) versioned(ctx context.Context) (bool, error) {
	var ok bool
	err := m.db.QueryRowContext(ctx, `SELECT to_regclass($1) IS NOT NULL`, pgx.Identifier{m.schema, "goose_db_version"}.Sanitize()).Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("read migration version: %w", err)
	}
	return ok, nil
}

// Version returns the newest applied migration, 0 when none is. It only
// reads.
func (m *Migrator) Version(ctx context.Context) (int64, error) {
	ok, err := m.versioned(ctx)
	if err != nil || !ok {
		return 0, err
	}
	return m.provider.GetDBVersion(ctx)
}

// Up creates the schema if needed and applies every pending migration.
func (m *Migrator) Up(ctx context.Context) ([]*goose.MigrationResult, error) {
	if _, err := m.db.ExecContext(ctx, "CREATE SCHEMA IF NOT EXISTS "+pgx.Identifier{m.schema}.Sanitize()); err != nil {
		return nil, fmt.Errorf("create schema %s: %w", m.schema, err)
	}
	return m.provider.Up(ctx)
}

// Down rolls back the newest applied migration; with none applied it
// returns ErrNothingToRollBack and changes nothing.
func (m *Migrator) Down(ctx context.Context) (*goose.MigrationResult, error) {
	ok, err := m.versioned(ctx)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, ErrNothingToRollBack
	}
	r, err := m.provider.Down(ctx)
	if errors.Is(err, goose.ErrNoNextVersion) {
		return nil, ErrNothingToRollBack
	}
	return r, err
}

// Status lists every migration and whether it is applied. It only reads:
// on a schema without migrations (or no schema at all) every migration is
// pending.
func (m *Migrator) Status(ctx context.Context) ([]*goose.MigrationStatus, error) {
	ok, err := m.versioned(ctx)
	if err != nil {
		return nil, err
	}
	if ok {
		return m.provider.Status(ctx)
	}
	var st []*goose.MigrationStatus
	for _, src := range m.provider.ListSources() {
		st = append(st, &goose.MigrationStatus{Source: src, State: goose.StatePending})
	}
	return st, nil
}

// Up is a shortcut: open, apply every pending migration, close.
func Up(ctx context.Context, databaseURL, schema string) error {
	m, err := Open(ctx, databaseURL, schema)
	if err != nil {
		return err
	}
	defer m.Close()
	if _, err := m.Up(ctx); err != nil {
		return fmt.Errorf("migrate up: %w", err)
	}
	return nil
}

// Check returns ErrNotMigrated unless every embedded migration is applied in
// schema. It only reads.
func Check(ctx context.Context, pool *pgxpool.Pool, schema string) error {
	var want int64
	entries, err := fs.Glob(files, "*.sql")
	if err != nil {
		return err
	}
	for _, e := range entries {
		var n int64
		if _, err := fmt.Sscanf(e, "%d_", &n); err == nil && n > want {
			want = n
		}
	}
	var have int64
	err = pool.QueryRow(ctx, `SELECT coalesce(max(version_id), 0) FROM `+pgx.Identifier{schema, "goose_db_version"}.Sanitize()+` WHERE is_applied`).Scan(&have)
	if err != nil {
		var pgErr interface{ SQLState() string }
		if errors.As(err, &pgErr) && pgErr.SQLState() == "42P01" {
			return ErrNotMigrated
		}
		return fmt.Errorf("read migration version: %w", err)
	}
	if have < want {
		return ErrNotMigrated
	}
	return nil
}
