package outbox

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// FormatTime writes its digits itself; it must agree with time.Format.
func TestFormatTimeMatchesLayout(t *testing.T) {
	times := []time.Time{
		time.Unix(0, 0),
		time.Date(2026, 12, 31, 23, 59, 59, 999999999, time.UTC),
		time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 999999000, time.UTC),
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2026, 3, 29, 1, 30, 0, 123456789, time.FixedZone("x", 5*3600+1800)),
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 10000 {
		times = append(times, time.Unix(r.Int64N(1<<36), r.Int64N(1e9)))
	}
	for _, tm := range times {
		if got, want := FormatTime(tm), tm.UTC().Format(TimeFormat); got != want {
			t.Fatalf("FormatTime(%v) = %q, want %q", tm, got, want)
		}
	}
}

func BenchmarkFormatTime(b *testing.B) {
	tm := time.Now()
	for b.Loop() {
		_ = FormatTime(tm)
	}
}

func TestPartSetPayload(t *testing.T) {
	var s PartSet
	for _, p := range []int{0, 5, 63} {
		s = s.With(p)
	}
	require.True(t, s.Has(0) && s.Has(5) && s.Has(63))
	require.False(t, s.Has(1) || s.Has(62))
	require.Len(t, s.String(), 16)
	require.Equal(t, s, ParsePartSet(s.String()))
	require.Equal(t, PartSet(0).With(PartitionOf("users", "42")), ParsePartSet(PartSet(0).With(PartitionOf("users", "42")).String()))
	// Anything else wakes every partition: an empty payload (Notify, older
	// writers), garbage, or a set naming none.
	for _, payload := range []string{"", "xyz", "00000000000000000", "zzzzzzzzzzzzzzzz", "0000000000000000", "+000000000000001"} {
		require.Equal(t, AllParts, ParsePartSet(payload), "%q", payload)
	}
	require.Equal(t, uint64(1<<64-1), uint64(AllParts))
}
