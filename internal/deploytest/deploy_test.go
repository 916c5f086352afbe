// Package deploytest checks the deployment files against the code: the
// services and environment of docker-compose.yml, deploy/Dockerfile, the
// Kubernetes manifests, the configuration table of README.md, and the
// service script.
package deploytest

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/writethrough/writethrough/internal/config"
)

// root is the repository root.
func root(t *testing.T) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	require.True(t, ok)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	dir := root(t)
	opts, err := cli.NewProjectOptions(
		[]string{filepath.Join(dir, "docker-compose.yml")},
		cli.WithWorkingDirectory(dir),
		// Only the file counts, not the environment of whoever runs the test.
		cli.WithEnv([]string{}),
		cli.WithName("writethrough"),
	)
	require.NoError(t, err)
	p, err := opts.LoadProject(context.Background())
	require.NoError(t, err, "docker-compose.yml does not load")
	return p
}

func TestComposeServices(t *testing.T) {
	t.Parallel()
	p := loadCompose(t)
	for _, name := range []string{"postgres", "redis", "nats", "writethrough"} {
		s, ok := p.Services[name]
		require.True(t, ok, "service %s missing", name)
		require.NotNil(t, s.HealthCheck, "service %s has no healthcheck", name)
		require.False(t, s.HealthCheck.Disable, "service %s disables its healthcheck", name)
		require.NotEmpty(t, s.HealthCheck.Test, "service %s has an empty healthcheck", name)
	}

	// Every service that keeps running has a health check; the one-shot
	// services are those others wait on to complete.
	oneShot := map[string]bool{}
	for _, s := range p.Services {
		for dep, d := range s.DependsOn {
			if d.Condition == types.ServiceConditionCompletedSuccessfully {
				oneShot[dep] = true
			}
		}
	}
	for name, s := range p.Services {
		if !oneShot[name] {
			require.NotNil(t, s.HealthCheck, "service %s has no healthcheck", name)
		}
		// Every dependency waits for health (or completion), not just start.
		for dep, d := range s.DependsOn {
			require.Contains(t, []string{types.ServiceConditionHealthy, types.ServiceConditionCompletedSuccessfully}, d.Condition,
				"%s depends on %s with condition %q", name, dep, d.Condition)
		}
		// Published ports stay on loopback.
		for _, port := range s.Ports {
			require.Equal(t, "127.0.0.1", port.HostIP, "service %s publishes %s beyond loopback", name, port.Published)
		}
	}

	wt := p.Services["writethrough"]
	require.NotNil(t, wt.Build, "writethrough is built from the repository")
	require.Equal(t, "deploy/Dockerfile", filepath.ToSlash(relTo(t, wt.Build.Context, wt.Build.Dockerfile)))
	require.Equal(t, types.ShellCommand{"serve"}, wt.Command)
	for _, dep := range []string{"postgres", "redis", "nats"} {
		require.Contains(t, wt.DependsOn, dep)
		require.Equal(t, types.ServiceConditionHealthy, wt.DependsOn[dep].Condition)
	}

	// The schema is migrated before the service starts.
	migrated := false
	for dep, d := range wt.DependsOn {
		cmd := p.Services[dep].Command
		if d.Condition == types.ServiceConditionCompletedSuccessfully && slices.Equal([]string(cmd), []string{"migrate", "up"}) {
			migrated = true
		}
	}
	require.True(t, migrated, "writethrough must wait for a one-shot `migrate up`")

	require.Contains(t, p.Services["nats"].Command, "-js", "NATS runs with JetStream")
	require.True(t, strings.HasPrefix(p.Services["postgres"].Image, "postgres:15"), p.Services["postgres"].Image)
	require.True(t, strings.HasPrefix(p.Services["redis"].Image, "redis:7"), p.Services["redis"].Image)
}

func relTo(t *testing.T, context, dockerfile string) string {
	t.Helper()
	if filepath.IsAbs(dockerfile) {
		rel, err := filepath.Rel(context, dockerfile)
		require.NoError(t, err)
		return rel
	}
	return dockerfile
}

func TestComposeEnvironmentIsConfiguration(t *testing.T) {
	t.Parallel()
	p := loadCompose(t)
	known := config.Variables()
	for _, name := range []string{"migrate", "writethrough"} {
		s, ok := p.Services[name]
		require.True(t, ok, "service %s missing", name)
		require.NotEmpty(t, s.Environment, "service %s sets no environment", name)
		for v, val := range s.Environment {
			if strings.HasPrefix(v, "OTEL_") {
				continue // read by the OpenTelemetry SDK
			}
			require.Contains(t, known, v, "service %s sets %s, which writethrough does not read", name, v)
			require.NotNil(t, val, "service %s: %s has no value", name, v)
		}
		for _, v := range []string{"DATABASE_URL", "REDIS_URL", "NATS_URL"} {
			require.Contains(t, s.Environment, v, "service %s must set %s", name, v)
		}
	}
	addr := p.Services["writethrough"].Environment["WT_HTTP_ADDR"]
	require.NotNil(t, addr)
	require.Equal(t, "0.0.0.0:8080", *addr, "the API must listen beyond the container's loopback")
}

func TestDockerfile(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(filepath.Join(root(t), "deploy", "Dockerfile"))
	require.NoError(t, err)
	var froms, users []string
	building := false
	for _, line := range strings.Split(string(b), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		switch strings.ToUpper(fields[0]) {
		case "FROM":
			froms = append(froms, line)
			users = users[:0] // USER applies per stage
		case "USER":
			users = append(users, fields[1])
		case "RUN":
			if strings.Contains(line, "go build") && strings.Contains(line, "./cmd/writethrough") {
				building = true
			}
		}
	}
	require.GreaterOrEqual(t, len(froms), 2, "deploy/Dockerfile must be multi-stage")
	require.True(t, strings.Contains(froms[0], "golang:1.26"), "the build stage uses Go 1.26: %s", froms[0])
	require.True(t, building, "deploy/Dockerfile must build ./cmd/writethrough")
	require.NotEmpty(t, users, "the runtime stage must set a USER")
	last := users[len(users)-1]
	require.NotContains(t, []string{"root", "0", "0:0"}, last, "the runtime stage must not run as root")
}

// TestReadmeConfiguration keeps the README's configuration table in step
// with the variables the code reads.
func TestReadmeConfiguration(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(filepath.Join(root(t), "README.md"))
	require.NoError(t, err)
	readme := string(b)
	for _, v := range config.Variables() {
		require.True(t, regexp.MustCompile("\\|\\s*`"+v+"`\\s*\\|").MatchString(readme),
			"README.md's configuration table lacks `%s`", v)
	}
}

func TestServicesScript(t *testing.T) {
	t.Parallel()
	script := filepath.Join(root(t), "deploy", "services.sh")
	out, err := exec.Command("bash", "-n", script).CombinedOutput()
	require.NoError(t, err, "deploy/services.sh: %s", out)

	// A service that is not on this machine cannot be started here: one line
	// names it and the variable to fix.
	cmd := exec.Command("bash", script, "run")
	cmd.Env = append(os.Environ(),
		"DATABASE_URL=postgres://postgres@db.invalid:5432/writethrough?sslmode=disable",
		"WT_SERVICES_WAIT=1",
	)
	out, err = cmd.CombinedOutput()
	require.Error(t, err)
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	require.Len(t, lines, 1, "one line: %s", out)
	require.Contains(t, lines[0], "postgres")
	require.Contains(t, lines[0], "DATABASE_URL")

	cmd = exec.Command("bash", script, "nonsense")
	out, err = cmd.CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(out), "usage")
}

// TestKubernetesEnvironmentIsConfiguration checks the variables the
// manifests set, as TestComposeEnvironmentIsConfiguration does for compose.
func TestKubernetesEnvironmentIsConfiguration(t *testing.T) {
	t.Parallel()
	f, err := os.Open(filepath.Join(root(t), "deploy", "k8s", "writethrough.yaml"))
	require.NoError(t, err)
	defer f.Close()
	type container struct {
		Name string
		Args []string
		Env  []struct{ Name string }
	}
	type manifest struct {
		Kind string
		Spec struct {
			Template struct {
				Spec struct{ Containers []container }
			}
		}
	}
	known := config.Variables()
	dec := yaml.NewDecoder(f)
	var commands [][]string
	for {
		var m manifest
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			break
		} else {
			require.NoError(t, err)
		}
		for _, c := range m.Spec.Template.Spec.Containers {
			commands = append(commands, c.Args)
			require.NotEmpty(t, c.Env, "%s %s sets no environment", m.Kind, c.Name)
			for _, e := range c.Env {
				if !strings.HasPrefix(e.Name, "OTEL_") {
					require.Contains(t, known, e.Name, "%s %s sets %s, which writethrough does not read", m.Kind, c.Name, e.Name)
				}
			}
		}
	}
	require.Contains(t, commands, []string{"migrate", "up"})
	require.Contains(t, commands, []string{"serve"})
}
