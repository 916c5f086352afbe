package pgbench

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParse(t *testing.T) {
	t.Parallel()
	out := []byte(`pgbench (15.19 (Debian 15.19-0+deb12u1))
transaction type: /tmp/write.sql
number of clients: 8
number of transactions actually processed: 41234
number of failed transactions: 0 (0.000%)
latency average = 1.940 ms
initial connection time = 12.345 ms
tps = 4123.456789 (without initial connection time)
`)
	r, err := Parse(out)
	require.NoError(t, err)
	require.InDelta(t, 4123.456789, r.TPS, 1e-6)
	require.Equal(t, 1940*time.Microsecond, r.Latency)
	_, err = Parse([]byte("pgbench: error: connection refused"))
	require.Error(t, err)
}

func TestReadLatencies(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	prefix := filepath.Join(dir, "latency")
	require.NoError(t, os.WriteFile(prefix+".1234", []byte("0 0 1500 0 1764000000 12345 20\n1 0 800 0 1764000000 12346 5\n"), 0o600))
	require.NoError(t, os.WriteFile(prefix+".1234.1", []byte("2 0 9000 0 1764000000 12347 0\n"), 0o600))
	lat, err := readLatencies(prefix)
	require.NoError(t, err)
	require.ElementsMatch(t, []time.Duration{1500 * time.Microsecond, 800 * time.Microsecond, 9 * time.Millisecond}, lat)
	left, _ := filepath.Glob(prefix + ".*")
	require.Empty(t, left, "the logs are removed once read")

	require.NoError(t, os.WriteFile(prefix+".9", []byte("0 0 x 0\n"), 0o600))
	_, err = readLatencies(prefix)
	require.Error(t, err)
}
