package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// childEnv makes this binary an agent fleet: "<candidate|raw> <url> <n>"
// dials n idle tunnels, prints "ready", and holds them until stdin closes.
const childEnv = "KAS_TUNNEL_BENCH_CHILD"

type memResult struct {
	perConn    float64 // heap + stack bytes per idle tunnel on the node
	heap       float64 // heap bytes per idle tunnel
	goroutines float64 // goroutines per idle tunnel
}

// idleMemory holds n idle tunnels on the node side of candidate c (nil: raw
// WebSockets, each with a reader goroutine) while a child process holds the
// agent ends, and returns the node's memory per tunnel from
// runtime.MemStats after GC, before and after.
func idleMemory(ctx context.Context, c *candidate, n int) (memResult, error) {
	var (
		mu      sync.Mutex
		held    []io.Closer
		count   atomic.Int64
		readers sync.WaitGroup
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var cl io.Closer
		if c == nil {
			nc, err := acceptNetConn(w, r)
			if err != nil {
				return
			}
			readers.Go(func() { io.Copy(io.Discard, nc) })
			cl = nc
		} else {
			m, err := c.accept(w, r)
			if err != nil {
				return
			}
			cl = m
		}
		mu.Lock()
		held = append(held, cl)
		mu.Unlock()
		count.Add(1)
	}))
	defer srv.Close()
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, cl := range held {
			cl.Close()
		}
		readers.Wait()
	}()

	name := "raw"
	if c != nil {
		name = c.name
	}
	before, gBefore := settledMem()

	cmd := exec.CommandContext(ctx, os.Args[0])
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %s %d", childEnv, name, "ws"+strings.TrimPrefix(srv.URL, "http"), n))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return memResult{}, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return memResult{}, err
	}
	if err := cmd.Start(); err != nil {
		return memResult{}, fmt.Errorf("start agent fleet: %w", err)
	}
	defer cmd.Wait()
	defer stdin.Close()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "ready\n" {
		return memResult{}, fmt.Errorf("agent fleet: %q %v", line, err)
	}
	for deadline := time.Now().Add(time.Minute); count.Load() < int64(n); {
		if time.Now().After(deadline) {
			return memResult{}, fmt.Errorf("only %d of %d tunnels arrived", count.Load(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	after, gAfter := settledMem()
	return memResult{
		perConn:    float64(after.HeapAlloc+after.StackInuse-before.HeapAlloc-before.StackInuse) / float64(n),
		heap:       float64(after.HeapAlloc-before.HeapAlloc) / float64(n),
		goroutines: float64(gAfter-gBefore) / float64(n),
	}, nil
}

func settledMem() (runtime.MemStats, int) {
	var m runtime.MemStats
	for range 3 {
		runtime.GC()
	}
	runtime.ReadMemStats(&m)
	return m, runtime.NumGoroutine()
}

// runChild is the agent fleet of idleMemory.
func runChild() error {
	f := strings.Fields(os.Getenv(childEnv))
	if len(f) != 3 {
		return fmt.Errorf("bad %s", childEnv)
	}
	name, url := f[0], f[1]
	n, err := strconv.Atoi(f[2])
	if err != nil {
		return err
	}
	dial := func(ctx context.Context) (io.Closer, error) {
		if name == "raw" {
			nc, err := dialNetConn(ctx, url)
			if err != nil {
				return nil, err
			}
			go io.Copy(io.Discard, nc) // held until the process exits
			return nc, nil
		}
		for _, c := range candidates {
			if c.name == name {
				return c.dial(ctx, url)
			}
		}
		return nil, fmt.Errorf("unknown candidate %q", name)
	}
	ctx := context.Background()
	var (
		wg      sync.WaitGroup
		next    atomic.Int64
		errOnce sync.Once
		first   error
		mu      sync.Mutex
		keep    []io.Closer
	)
	for range 16 {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				cl, err := dial(ctx)
				if err != nil {
					errOnce.Do(func() { first = err })
					return
				}
				mu.Lock()
				keep = append(keep, cl)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if first != nil {
		return first
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin) // hold until the parent is done
	runtime.KeepAlive(keep)
	return nil
}
