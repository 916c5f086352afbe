package chaos

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// BuildBinary builds `writethrough` with the chaos build tag (crash points
// and broken variants compiled in) into dir.
func BuildBinary(ctx context.Context, dir string) (string, error) {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	out := filepath.Join(dir, "writethrough-chaos")
	cmd := exec.CommandContext(ctx, "go", "build", "-tags", "chaos", "-o", out, "./cmd/writethrough")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build -tags chaos: %w\n%s", err, b)
	}
	return out, nil
}

// service is one `writethrough serve` process at a time, restarted after
// kills and crash points.
type service struct {
	bin  string
	env  []string
	addr string
	log  *os.File

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	// exits counts process exits, by kill or crash.
	exits int
}

func newService(bin, addr string, env []string, logPath string) (*service, error) {
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	return &service{bin: bin, env: env, addr: addr, log: log}, nil
}

// start runs the service with extra environment and waits until /healthz
// answers (or the process exits, e.g. a crash point fired at once).
func (s *service) start(ctx context.Context, extra ...string) error {
	s.mu.Lock()
	if s.cmd != nil {
		s.mu.Unlock()
		return errors.New("service already running")
	}
	cmd := exec.Command(s.bin, "serve")
	cmd.Env = append(append(os.Environ(), s.env...), extra...)
	cmd.Stdout, cmd.Stderr = s.log, s.log
	fmt.Fprintf(s.log, "=== start %v\n", extra)
	if err := cmd.Start(); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("start service: %w", err)
	}
	done := make(chan struct{})
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	go func() {
		_ = cmd.Wait()
		s.mu.Lock()
		if s.cmd == cmd {
			s.cmd = nil
		}
		s.exits++
		s.mu.Unlock()
		close(done)
	}()
	return s.waitReady(ctx, done)
}

func (s *service) waitReady(ctx context.Context, done chan struct{}) error {
	client := &http.Client{Timeout: 500 * time.Millisecond}
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-done:
			return errExited
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		resp, err := client.Get("http://" + s.addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("service on %s not ready after 30s: %v", s.addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var errExited = errors.New("service exited")

// running returns the exit channel of the current process, nil if none.
func (s *service) running() chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return nil
	}
	return s.done
}

// kill sends SIGKILL and waits for the exit.
func (s *service) kill() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// terminate ends the service gracefully (SIGTERM: the relay finishes its
// round and releases its leases), then SIGKILL after 10s.
func (s *service) terminate() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-done
	}
}

// stop terminates the service and closes its log.
func (s *service) stop() {
	s.terminate()
	s.log.Close()
}
