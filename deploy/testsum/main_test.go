package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestCountsAndShowsFailures(t *testing.T) {
	t.Parallel()
	in := strings.Join([]string{
		`{"Action":"start","Package":"p/a"}`,
		`{"Action":"run","Package":"p/a","Test":"TestOK"}`,
		`{"Action":"output","Package":"p/a","Test":"TestOK","Output":"=== RUN   TestOK\n"}`,
		`{"Action":"output","Package":"p/a","Test":"TestOK","Output":"noise of a passing test\n"}`,
		`{"Action":"pass","Package":"p/a","Test":"TestOK"}`,
		`{"Action":"run","Package":"p/a","Test":"TestBad"}`,
		`{"Action":"output","Package":"p/a","Test":"TestBad","Output":"    bad_test.go:9: want 2, got 3\n"}`,
		`{"Action":"fail","Package":"p/a","Test":"TestBad"}`,
		`{"Action":"skip","Package":"p/a","Test":"TestLater"}`,
		`{"Action":"output","Package":"p/a","Output":"FAIL\tp/a\t0.1s\n"}`,
		`{"Action":"fail","Package":"p/a"}`,
		`{"Action":"output","Package":"p/b","Output":"ok  \tp/b\t0.2s\n"}`,
		`{"Action":"pass","Package":"p/b"}`,
	}, "\n")
	var out strings.Builder
	code := run(strings.NewReader(in), &out)
	require.Equal(t, 1, code)
	got := out.String()
	require.Contains(t, got, "want 2, got 3")
	require.NotContains(t, got, "noise of a passing test")
	require.Contains(t, got, "ok  \tp/b")
	require.True(t, strings.HasSuffix(got, "\n1 passed, 1 failed, 1 skipped\n"), got)
}

func TestPackageFailureWithoutTestCounts(t *testing.T) {
	t.Parallel()
	in := strings.Join([]string{
		`{"ImportPath":"p/c","Action":"build-output","Output":"c.go:3:1: syntax error\n"}`,
		`{"ImportPath":"p/c","Action":"build-fail"}`,
		`{"Action":"output","Package":"p/c","Output":"FAIL\tp/c [build failed]\n"}`,
		`{"Action":"fail","Package":"p/c"}`,
		`{"Action":"pass","Package":"p/d","Test":"TestOK"}`,
	}, "\n")
	var out strings.Builder
	require.Equal(t, 1, run(strings.NewReader(in), &out))
	require.Contains(t, out.String(), "syntax error")
	require.True(t, strings.HasSuffix(out.String(), "\n1 passed, 1 failed, 0 skipped\n"), out.String())
}

func TestNoTestIsAFailure(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	in := `{"Action":"output","Package":"p/e","Output":"?   \tp/e\t[no test files]\n"}`
	require.Equal(t, 1, run(strings.NewReader(in), &out))
	require.True(t, strings.HasSuffix(out.String(), "0 passed, 0 failed, 0 skipped\n"))
}

func TestAllPassing(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	in := `{"Action":"pass","Package":"p/f","Test":"TestOK"}` + "\n" + `{"Action":"pass","Package":"p/f"}`
	require.Equal(t, 0, run(strings.NewReader(in), &out))
	require.Equal(t, "1 passed, 0 failed, 0 skipped\n", out.String())
}
