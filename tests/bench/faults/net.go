package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Modes of a cutter.
const (
	modePass   = iota // forward
	modeRefuse        // cut every connection, refuse new ones (a host that is gone: RST)
	modePause         // forward nothing, close nothing (a partition: packets vanish, TCP waits)
)

// cutter is a TCP proxy on loopback that can cut the path it stands on.
// Backends names the addresses to try for each new connection, in order
// ("unix:/path" for a Unix socket); the first that accepts gets it.
type cutter struct {
	ln       net.Listener
	backends func() []string
	mode     atomic.Int32
	noRoute  atomic.Int64 // connections no backend took

	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	resumed chan struct{} // closed when a pause ends
}

func newCutter(backends func() []string) (*cutter, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	c := &cutter{ln: ln, backends: backends, conns: map[net.Conn]struct{}{}, resumed: make(chan struct{})}
	close(c.resumed)
	go c.serve()
	return c, nil
}

func (c *cutter) addr() string { return c.ln.Addr().String() }

func (c *cutter) serve() {
	for {
		conn, err := c.ln.Accept()
		if err != nil {
			return
		}
		if c.mode.Load() == modeRefuse {
			conn.(*net.TCPConn).SetLinger(0)
			conn.Close()
			continue
		}
		go c.handle(conn)
	}
}

func (c *cutter) track(conn net.Conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mode.Load() == modeRefuse {
		return false
	}
	c.conns[conn] = struct{}{}
	return true
}

func (c *cutter) untrack(conn net.Conn) {
	c.mu.Lock()
	delete(c.conns, conn)
	c.mu.Unlock()
	conn.Close()
}

// waitPass blocks while the cutter pauses.
func (c *cutter) waitPass() {
	c.mu.Lock()
	ch := c.resumed
	c.mu.Unlock()
	<-ch
}

func (c *cutter) handle(conn net.Conn) {
	if !c.track(conn) {
		conn.Close()
		return
	}
	defer c.untrack(conn)
	c.waitPass() // a paused path does not even reach the backend
	var up net.Conn
	for _, addr := range c.backends() {
		network := "tcp"
		if p, ok := strings.CutPrefix(addr, "unix:"); ok {
			network, addr = "unix", p
		}
		var err error
		if up, err = net.DialTimeout(network, addr, 2*time.Second); err == nil {
			break
		}
	}
	if up == nil {
		c.noRoute.Add(1)
		if tc, ok := conn.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		return
	}
	if !c.track(up) {
		up.Close()
		return
	}
	defer c.untrack(up)
	done := make(chan struct{}, 2)
	go func() { c.copy(up, conn); done <- struct{}{} }()
	go func() { c.copy(conn, up); done <- struct{}{} }()
	<-done
}

// copy forwards src to dst; while paused, what it read waits.
func (c *cutter) copy(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			c.waitPass()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// setMode changes the mode: refuse cuts what is open, pass releases a pause.
func (c *cutter) setMode(m int32) {
	c.mu.Lock()
	old := c.mode.Swap(m)
	if m == modePause && old != modePause {
		c.resumed = make(chan struct{})
	}
	if m != modePause && old == modePause {
		close(c.resumed)
	}
	var cut []net.Conn
	if m == modeRefuse {
		for conn := range c.conns {
			cut = append(cut, conn)
		}
		clear(c.conns)
	}
	c.mu.Unlock()
	for _, conn := range cut {
		if tc, ok := conn.(*net.TCPConn); ok {
			tc.SetLinger(0) // RST, as a host that died
		}
		conn.Close()
	}
}

func (c *cutter) close() {
	c.ln.Close()
	c.setMode(modeRefuse)
}

// balancer is a Service: a TCP load balancer whose endpoints are the
// targets whose readiness URL answers 200, polled every period (as
// kube-proxy follows a readiness probe with periodSeconds). Each new
// connection goes to the next ready endpoint, round robin; an endpoint
// that refuses the connection is skipped.
type balancer struct {
	*cutter
	targets []lbTarget
	ready   []atomic.Bool
	next    atomic.Uint64
	stop    context.CancelFunc
}

type lbTarget struct{ addr, readyURL string }

func newBalancer(targets []lbTarget, period time.Duration) (*balancer, error) {
	b := &balancer{targets: targets, ready: make([]atomic.Bool, len(targets))}
	var err error
	if b.cutter, err = newCutter(b.endpoints); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.stop = cancel
	hc := &http.Client{Timeout: period, Transport: &http.Transport{DisableKeepAlives: true}}
	for i, t := range targets {
		go func() {
			tick := time.NewTicker(period)
			defer tick.Stop()
			for {
				resp, err := hc.Get(t.readyURL)
				ok := err == nil && resp.StatusCode == http.StatusOK
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				b.ready[i].Store(ok)
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
		}()
	}
	return b, nil
}

// endpoints returns the ready targets, starting with the next in turn.
func (b *balancer) endpoints() []string {
	n := len(b.targets)
	start := int(b.next.Add(1) % uint64(n))
	var out []string
	for i := range n {
		j := (start + i) % n
		if b.ready[j].Load() {
			out = append(out, b.targets[j].addr)
		}
	}
	return out
}

func (b *balancer) close() {
	b.stop()
	b.cutter.close()
}
