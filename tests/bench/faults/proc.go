package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/kas-project/kas/cmd/kas/app"
)

// roleEnv makes this binary a kas process: with it set, main runs the real
// command line (app.CLI) with the arguments it was given, as bin/kas
// would, stopping gracefully on SIGTERM.
const roleEnv = "KAS_FAULTS_CHILD"

func runChild() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	return app.CLI{Stdout: os.Stdout, Stderr: os.Stderr, Program: os.Args[0]}.Run(ctx, os.Args[1:])
}

// child is a kas process (kas controlplane or kas dataplane) that can be
// stopped, killed and started again with the same configuration. Its
// output goes to logPath, appended across restarts.
type child struct {
	name     string
	args     []string
	env      []string
	logPath  string
	readyURL string

	cmd  *exec.Cmd
	done chan struct{}
}

func (c *child) start() error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "---- start %s %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(c.args, " "))
	cmd := exec.Command(exe, c.args...)
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KAS_") && !strings.HasPrefix(kv, "OWN_PRIVATE_API_") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(append(env, roleEnv+"=1"), c.env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// A child must not outlive the harness, whatever kills it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", c.name, err)
	}
	c.cmd, c.done = cmd, make(chan struct{})
	done := c.done
	go func() {
		cmd.Wait()
		close(done)
	}()
	return nil
}

// waitReady polls the child's /readyz until it answers 200.
func (c *child) waitReady(bound time.Duration) error {
	hc := &http.Client{Timeout: time.Second}
	err := poll(bound, 50*time.Millisecond, func() bool {
		resp, err := hc.Get(c.readyURL)
		if err != nil {
			return false
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	if err != nil {
		select {
		case <-c.done:
			return fmt.Errorf("%s exited (%v); its log: %s", c.name, c.cmd.ProcessState, c.logPath)
		default:
		}
		return fmt.Errorf("%s not ready within %v; its log: %s", c.name, bound, c.logPath)
	}
	return nil
}

// kill ends the child with SIGKILL and reaps it.
func (c *child) kill() {
	if c.cmd == nil {
		return
	}
	c.cmd.Process.Kill()
	<-c.done
}

// terminate sends SIGTERM and waits for the exit (SIGKILL after bound).
func (c *child) terminate(bound time.Duration) error {
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
		return nil
	case <-time.After(bound):
		c.kill()
		return fmt.Errorf("%s did not exit within %v of SIGTERM; killed (log: %s)", c.name, bound, c.logPath)
	}
}

// poll calls cond every interval until it holds, for at most bound.
func poll(bound, interval time.Duration, cond func() bool) error {
	deadline := time.Now().Add(bound)
	for {
		if cond() {
			return nil
		}
		if time.Now().After(deadline) {
			return errTimeout
		}
		time.Sleep(interval)
	}
}

// freePort returns a loopback address with a port nothing listens on now.
// Children listen on fixed ports so that a restarted one is found where
// the balancers expect it.
func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
