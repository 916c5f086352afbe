package chaos

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestPlanIsSeededAndCoversEveryKind(t *testing.T) {
	t.Parallel()
	a := NewPlan(1, 50*time.Second, AllFaultKinds)
	b := NewPlan(1, 50*time.Second, AllFaultKinds)
	require.Equal(t, a, b, "the same seed gives the same plan")
	require.NotEqual(t, a, NewPlan(2, 50*time.Second, AllFaultKinds))
	seen := map[FaultKind]bool{}
	for i, f := range a.Faults {
		seen[f.Kind] = true
		if i > 0 {
			prev := a.Faults[i-1]
			require.Greater(t, f.At, prev.At+prev.For, "faults do not overlap")
		}
	}
	require.Len(t, seen, len(AllFaultKinds))
	require.GreaterOrEqual(t, a.Duration, 50*time.Second)
	t.Log(a)
}
