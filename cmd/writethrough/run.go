package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"

	"github.com/writethrough/writethrough/internal/config"
)

// Exit statuses (CONTRACT §6).
const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

// cli is what every subcommand gets.
type cli struct {
	getenv func(string) string
	stdout io.Writer
	stderr io.Writer
}

// command is one subcommand; path is its words ("outbox dead list").
type command struct {
	summary string
	run     func(ctx context.Context, c *cli, args []string) int
}

// commands maps a command's words to it. Each lives in its own file.
var commands = map[string]command{}

func register(path, summary string, run func(ctx context.Context, c *cli, args []string) int) {
	commands[path] = command{summary: summary, run: run}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	c := &cli{getenv: getenv, stdout: stdout, stderr: stderr}
	if len(args) == 0 {
		c.usage(stderr) // a mistake: usage goes with the errors
		return exitUsage
	}
	if args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		c.usage(stdout)
		return exitOK
	}
	// Longest match of the leading words.
	for n := min(3, len(args)); n > 0; n-- {
		path := strings.Join(args[:n], " ")
		if cmd, ok := commands[path]; ok {
			return cmd.run(ctx, c, args[n:])
		}
	}
	fmt.Fprintf(stderr, "writethrough: unknown command %q (see `writethrough help`)\n", strings.Join(args, " "))
	return exitUsage
}

func (c *cli) usage(w io.Writer) {
	fmt.Fprintln(w, "usage: writethrough <command> [flags]")
	fmt.Fprintln(w, "\ncommands:")
	paths := make([]string, 0, len(commands))
	for p := range commands {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		fmt.Fprintf(w, "  %-22s %s\n", p, commands[p].summary)
	}
}

// flags returns a FlagSet for a command that writes its errors to stderr.
func (c *cli) flags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("writethrough "+name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	return fs
}

// parse binds the configuration to fs, parses args and validates. When it
// returns a nil Config the command must exit with the returned status: 0
// after -h, 2 on bad usage or configuration (one line names the problem).
func (c *cli) parse(fs *flag.FlagSet, args []string) (*config.Config, int) {
	b := config.Bind(fs, c.getenv)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, exitOK // help was printed
		}
		return nil, exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(c.stderr, "%s: unexpected arguments: %s\n", fs.Name(), strings.Join(fs.Args(), " "))
		return nil, exitUsage
	}
	cfg, err := b.Finish()
	if err != nil {
		fmt.Fprintf(c.stderr, "writethrough: bad configuration: %v\n", err)
		return nil, exitUsage
	}
	return cfg, exitOK
}

// logger returns the JSON logger at the configured level.
func (c *cli) logger(cfg *config.Config) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(cfg.LogLevel))
	return slog.New(slog.NewJSONHandler(c.stderr, &slog.HandlerOptions{Level: lvl}))
}

// fail prints one line and returns exit status 1.
func (c *cli) fail(format string, args ...any) int {
	fmt.Fprintf(c.stderr, "writethrough: %s\n", joinLines(fmt.Sprintf(format, args...)))
	return exitFail
}

// joinLines joins a message that spans lines (a connection error lists each
// address it tried on its own line) into one.
func joinLines(msg string) string {
	var b strings.Builder
	for line := range strings.Lines(msg) {
		line = strings.TrimSpace(line)
		switch {
		case line == "":
			continue
		case b.Len() == 0:
		case strings.HasSuffix(b.String(), ":"):
			b.WriteByte(' ')
		default:
			b.WriteString("; ")
		}
		b.WriteString(line)
	}
	return b.String()
}
