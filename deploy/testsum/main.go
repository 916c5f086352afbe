// Command testsum reads `go test -json` on stdin and prints what plain
// `go test` prints (one line per package, the output of failing tests, build
// errors), then one closing line: "N passed, N failed, N skipped".
//
// It exits 1 when a test or a package failed, or when no test ran.
//
//	go test -json ./... | go run ./deploy/testsum
package main

import (
	"bufio"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
)

// event is one line of `go test -json` (see `go doc test2json`).
type event struct {
	Action     string
	Package    string
	Test       string
	Output     string
	ImportPath string
}

type key struct{ pkg, test string }

// summary counts tests and keeps the output of tests still running.
type summary struct {
	out                     io.Writer
	passed, failed, skipped int
	buffered                map[key][]string
	pkgFailedTests          map[string]int
}

func newSummary(out io.Writer) *summary {
	return &summary{out: out, buffered: map[key][]string{}, pkgFailedTests: map[string]int{}}
}

func (s *summary) add(e event) {
	k := key{e.Package, e.Test}
	switch {
	case e.Action == "build-output":
		fmt.Fprint(s.out, e.Output)
	case e.Action == "build-fail":
		// The package's own "FAIL ... [build failed]" line follows.
	case e.Test != "":
		s.addTest(k, e)
	case e.Action == "output":
		if e.Output != "PASS\n" && !strings.HasPrefix(e.Output, "=== ") {
			fmt.Fprint(s.out, e.Output)
		}
	case e.Action == "fail":
		// A package that failed outside any test: build error, TestMain,
		// a panic or a timeout. It counts as one failure.
		if s.pkgFailedTests[e.Package] == 0 {
			s.failed++
		}
	}
}

func (s *summary) addTest(k key, e event) {
	switch e.Action {
	case "output":
		s.buffered[k] = append(s.buffered[k], e.Output)
	case "pass":
		s.passed++
		delete(s.buffered, k)
	case "skip":
		s.skipped++
		delete(s.buffered, k)
	case "fail":
		s.failed++
		s.pkgFailedTests[k.pkg]++
		for _, line := range s.buffered[k] {
			fmt.Fprint(s.out, line)
		}
		delete(s.buffered, k)
	}
}

// finish prints what is left of tests that never ended, and the closing line.
func (s *summary) finish() {
	keys := slices.SortedFunc(maps.Keys(s.buffered), func(a, b key) int {
		return cmp.Or(cmp.Compare(a.pkg, b.pkg), cmp.Compare(a.test, b.test))
	})
	for _, k := range keys {
		fmt.Fprintf(s.out, "--- %s %s did not finish:\n", k.pkg, k.test)
		for _, line := range s.buffered[k] {
			fmt.Fprint(s.out, line)
		}
	}
	fmt.Fprintf(s.out, "%d passed, %d failed, %d skipped\n", s.passed, s.failed, s.skipped)
}

func run(in io.Reader, out io.Writer) int {
	s := newSummary(out)
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 64*1024), 64*1024*1024)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil {
			// Not test2json: the go command's own words. Show them.
			fmt.Fprintf(out, "%s\n", line)
			continue
		}
		s.add(e)
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintf(out, "testsum: read: %v\n", err)
		s.failed++
	}
	s.finish()
	if s.failed > 0 || s.passed == 0 {
		return 1
	}
	return 0
}

func main() {
	os.Exit(run(os.Stdin, os.Stdout))
}
