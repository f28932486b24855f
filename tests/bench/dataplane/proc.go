package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// roleEnv makes this binary a child of the benchmark: a node, a raw
// WebSocket server or an agent fleet (see child.go). Its configuration is
// the first line of its stdin, in JSON; then it answers one line on stdout
// per command line on stdin, and exits when stdin closes.
const roleEnv = "KAS_DATAPLANE_BENCH_ROLE"

// proc is a child process seen from the parent.
type proc struct {
	name string
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Reader
	done chan struct{}
}

// startProc re-executes this binary as role with cfg and waits for its
// first line, which must start with want; it returns that line's fields.
func startProc(ctx context.Context, name, role string, cfg any, want string, timeout time.Duration) (*proc, []string, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = append(os.Environ(), roleEnv+"="+role)
	cmd.Stderr = os.Stderr
	// A child must not outlive the benchmark, whatever kills it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, in: in, out: bufio.NewReader(out), done: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(p.done)
	}()
	b, err := json.Marshal(cfg)
	if err == nil {
		_, err = fmt.Fprintf(in, "%s\n", b)
	}
	if err != nil {
		p.kill()
		return nil, nil, fmt.Errorf("configure %s: %w", name, err)
	}
	f, err := p.read(want, timeout)
	if err != nil {
		p.kill()
		return nil, nil, err
	}
	return p, f, nil
}

// read reads one line, which must start with want, within timeout.
func (p *proc) read(want string, timeout time.Duration) ([]string, error) {
	type result struct {
		line string
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		line, err := p.out.ReadString('\n')
		ch <- result{line, err}
	}()
	select {
	case r := <-ch:
		f := strings.Fields(r.line)
		if r.err != nil || len(f) == 0 || f[0] != want {
			return nil, fmt.Errorf("%s: want %q, got %q (%v)", p.name, want, r.line, r.err)
		}
		return f[1:], nil
	case <-time.After(timeout):
		p.kill()
		return nil, fmt.Errorf("%s: no %q within %v", p.name, want, timeout)
	}
}

// call sends a command and reads its answer, which starts with the command.
func (p *proc) call(cmd string, timeout time.Duration) ([]string, error) {
	if _, err := fmt.Fprintln(p.in, cmd); err != nil {
		return nil, fmt.Errorf("%s: send %q: %w", p.name, cmd, err)
	}
	return p.read(strings.Fields(cmd)[0], timeout)
}

// callInts is call for answers made of integers.
func (p *proc) callInts(cmd string, timeout time.Duration) ([]int64, error) {
	f, err := p.call(cmd, timeout)
	if err != nil {
		return nil, err
	}
	out := make([]int64, len(f))
	for i, s := range f {
		if out[i], err = strconv.ParseInt(s, 10, 64); err != nil {
			return nil, fmt.Errorf("%s: %q: %w", p.name, cmd, err)
		}
	}
	return out, nil
}

// kill ends the process with SIGKILL and reaps it.
func (p *proc) kill() {
	p.cmd.Process.Kill()
	<-p.done
}
