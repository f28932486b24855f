// Package pglocal runs a PostgreSQL server from the system's binaries: the
// embedded default database of `kas` and the throwaway clusters of the tests.
// Postgres refuses to run as root, so when the caller is root the server runs
// as the `postgres` user; the data directory is then owned by that user.
// The server listens on a Unix socket only, so it never races for a port.
package pglocal

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrNotInstalled is returned when no PostgreSQL server binaries are found.
var ErrNotInstalled = errors.New("PostgreSQL server binaries (initdb, postgres) not found: install them with `apt-get install -y postgresql` or set PG_BINDIR to their directory")

// Options say where and how to run the server.
type Options struct {
	// DataDir holds the cluster. It is created and initialised when empty and
	// reused as is otherwise.
	DataDir string
	// Durable keeps fsync on. Tests turn it off for speed.
	Durable bool
	// LogFile receives the server's output; default DataDir/../postgres.log.
	LogFile string
	// MaxConnections; default 200.
	MaxConnections int
}

// Server is a running PostgreSQL server.
type Server struct {
	cmd       *exec.Cmd
	socketDir string
	logPath   string
	done      chan struct{}
	waitErr   error
}

// BinDir finds the directory of initdb and postgres: PG_BINDIR, then PATH,
// then the newest /usr/lib/postgresql/*/bin.
func BinDir() (string, error) {
	if d := os.Getenv("PG_BINDIR"); d != "" {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err != nil {
			return "", fmt.Errorf("PG_BINDIR=%s: no initdb there", d)
		}
		return d, nil
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			if _, err := os.Stat(filepath.Join(filepath.Dir(r), "postgres")); err == nil {
				return filepath.Dir(r), nil
			}
		}
	}
	m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	sort.Slice(m, func(i, j int) bool { return pgMajor(m[i]) < pgMajor(m[j]) })
	if len(m) > 0 {
		return filepath.Dir(m[len(m)-1]), nil
	}
	return "", ErrNotInstalled
}

func pgMajor(p string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(p))))
	return v
}

// runAs returns the credential to run Postgres with: the postgres user when
// we are root, nil otherwise.
func runAs() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, errors.New("running as root, and PostgreSQL refuses root: create the `postgres` user (apt-get install -y postgresql does) or run as another user")
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// Start initialises DataDir if needed and starts the server. It returns when
// the server accepts connections. Another server already running on the same
// data directory makes Start fail with a message that says so.
func Start(ctx context.Context, o Options) (*Server, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	cred, err := runAs()
	if err != nil {
		return nil, err
	}
	data, err := filepath.Abs(o.DataDir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(data), 0o755); err != nil {
		return nil, fmt.Errorf("create data directory parent: %w", err)
	}
	// Unix socket paths are limited to 107 bytes: keep the socket in /tmp.
	sock, err := os.MkdirTemp("", "kas-pg-")
	if err != nil {
		return nil, err
	}
	chown := func(p string) error {
		if cred == nil {
			return nil
		}
		return os.Chown(p, int(cred.Uid), int(cred.Gid))
	}
	if err := chown(sock); err != nil {
		return nil, err
	}
	command := func(name string, args ...string) *exec.Cmd {
		c := exec.Command(filepath.Join(bin, name), args...)
		// Pdeathsig: the server stops when we die, even by SIGKILL.
		c.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGQUIT, Setpgid: true}
		c.Env = append(os.Environ(), "LC_ALL=C")
		return c
	}
	if _, err := os.Stat(filepath.Join(data, "PG_VERSION")); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(data, 0o700); err != nil {
			return nil, fmt.Errorf("create data directory: %w", err)
		}
		if err := chown(data); err != nil {
			return nil, fmt.Errorf("give data directory to postgres: %w", err)
		}
		args := []string{"-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"}
		if !o.Durable {
			args = append(args, "--no-sync")
		}
		if out, err := command("initdb", args...).CombinedOutput(); err != nil {
			os.RemoveAll(sock)
			return nil, fmt.Errorf("initdb %s: %w: %s", data, err, lastLines(string(out), 5))
		}
	}
	logPath := o.LogFile
	if logPath == "" {
		logPath = filepath.Join(filepath.Dir(data), "postgres.log")
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open postgres log: %w", err)
	}
	defer logf.Close()
	maxConn := o.MaxConnections
	if maxConn == 0 {
		maxConn = 200
	}
	args := []string{"-D", data, "-k", sock, "-c", "listen_addresses=", "-c", "max_connections=" + strconv.Itoa(maxConn)}
	if !o.Durable {
		args = append(args, "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	}
	cmd := command("postgres", args...)
	start, _ := logf.Seek(0, 2)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		os.RemoveAll(sock)
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	s := &Server{cmd: cmd, socketDir: sock, logPath: logPath, done: make(chan struct{})}
	go func() { s.waitErr = cmd.Wait(); close(s.done) }()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for {
		c, err := pgx.Connect(ctx, s.DSN("postgres"))
		if err == nil {
			c.Close(ctx)
			return s, nil
		}
		select {
		case <-s.done:
			os.RemoveAll(sock)
			out := readFrom(logPath, start)
			if strings.Contains(out, "lock file") && strings.Contains(out, "already exists") {
				return nil, fmt.Errorf("data directory %s is in use by another running server (another kas?): stop it first", data)
			}
			return nil, fmt.Errorf("postgres exited: %v: %s", s.waitErr, lastLines(out, 5))
		case <-ctx.Done():
			s.Stop()
			return nil, fmt.Errorf("postgres did not accept connections: %w: %s", err, lastLines(readFrom(logPath, start), 5))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// DSN returns a connection string for database db.
func (s *Server) DSN(db string) string {
	return fmt.Sprintf("host=%s port=5432 user=postgres dbname=%s sslmode=disable", s.socketDir, db)
}

// Stop shuts the server down (fast mode) and waits for it.
func (s *Server) Stop() error {
	select {
	case <-s.done:
	default:
		_ = s.cmd.Process.Signal(syscall.SIGINT)
		<-s.done
	}
	os.RemoveAll(s.socketDir)
	return nil
}

// Done is closed when the server process exits.
func (s *Server) Done() <-chan struct{} { return s.done }

// CleanStale removes directories under the system temp directory matching
// pattern (e.g. "kas-pgtest-*") that no live server uses any more: left by
// processes that were killed. A directory is in use while a postmaster.pid
// or socket lock file in it (or in its data/ subdirectory) names a live process.
func CleanStale(pattern string) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), pattern))
	for _, d := range dirs {
		if inUse(d) {
			continue
		}
		os.RemoveAll(d)
	}
}

func inUse(dir string) bool {
	for _, f := range []string{"data/postmaster.pid", "postmaster.pid", ".s.PGSQL.5432.lock"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			continue
		}
		first, _, _ := strings.Cut(string(b), "\n")
		pid, err := strconv.Atoi(strings.TrimSpace(first))
		if err == nil && pid > 0 && syscall.Kill(pid, 0) != syscall.ESRCH {
			return true
		}
	}
	// A socket directory whose server never wrote a lock yet may be starting:
	// keep it if it is younger than a minute.
	if st, err := os.Stat(dir); err == nil && time.Since(st.ModTime()) < time.Minute {
		return true
	}
	return false
}

func readFrom(path string, off int64) string {
	b, err := os.ReadFile(path)
	if err != nil || off > int64(len(b)) {
		return ""
	}
	return string(b[off:])
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
