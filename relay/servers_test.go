package relay

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/writethrough/writethrough/internal/testenv"
)

// freePort returns a loopback port nobody listens on.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// server is a private nats-server or redis-server owned by one test.
type server struct {
	t    testing.TB
	name string
	args []string
	port int
	cmd  *exec.Cmd
}

func (s *server) start() {
	s.t.Helper()
	cmd := exec.Command(s.name, s.args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(s.t, cmd.Start())
	s.cmd = cmd
	addr := "127.0.0.1:" + strconv.Itoa(s.port)
	testenv.Eventually(s.t, 10*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, "%s did not listen on %s", s.name, addr)
}

func (s *server) stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// startNATS runs nats-server with JetStream on a free port, its store in a
// temporary directory; conf, when set, is extra configuration text.
func startNATS(t testing.TB, conf string) *server {
	t.Helper()
	port := freePort(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "nats.conf")
	text := fmt.Sprintf("listen: 127.0.0.1:%d\njetstream { store_dir: %q }\n%s\n", port, filepath.Join(dir, "js"), conf)
	require.NoError(t, os.WriteFile(path, []byte(text), 0o600))
	s := &server{t: t, name: "nats-server", args: []string{"-c", path}, port: port}
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *server) url(scheme string) string {
	return fmt.Sprintf("%s://127.0.0.1:%d", scheme, s.port)
}

// startRedis runs redis-server on a free port without persistence.
func startRedis(t testing.TB) *server {
	t.Helper()
	port := freePort(t)
	s := &server{t: t, name: "redis-server", port: port, args: []string{
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", t.TempDir(),
	}}
	s.start()
	t.Cleanup(s.stop)
	return s
}

// closeRedis closes a client of a private redis-server and waits until its
// pool's background dialer has ended. go-redis starts that dialer after
// failed dials (the server was down) and it sleeps a second between probes,
// so it can outlive Close by up to a second; goleak would report it.
func closeRedis(t testing.TB, rdb *redis.Client) {
	t.Helper()
	require.NoError(t, rdb.Close())
	const dialer = "go-redis/v9/internal/pool.(*ConnPool).tryDial"
	buf := make([]byte, 1<<20)
	testenv.Eventually(t, 5*time.Second, func() bool {
		n := runtime.Stack(buf, true)
		for n == len(buf) {
			buf = make([]byte, 2*len(buf))
			n = runtime.Stack(buf, true)
		}
		return !bytes.Contains(buf[:n], []byte(dialer))
	}, "the closed Redis client's background dialer did not end")
}
