package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kas-project/kas/agent"
	"github.com/kas-project/kas/dataplane"
	"github.com/kas-project/kas/dataplane/tunnel"
	"github.com/kas-project/kas/internal/listen"
)

// nodeConfig configures a node child.
type nodeConfig struct {
	NodeID          string `json:"node_id"`
	ControlPlaneURL string `json:"controlplane_url"`
	Key             []byte `json:"key"`
}

// fleetConfig configures an agent fleet child.
type fleetConfig struct {
	Agents []cred `json:"agents"`
	// Backends are the node agent listeners' host:port, tried in order
	// for every new connection by the fleet's load balancer.
	Backends []string `json:"backends"`
	// Raw makes the fleet dial len(Agents) plain WebSockets to
	// Backends[0] instead of running agents.
	Raw bool `json:"raw"`
}

func runChild(role string) error {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(nil, 64<<20)
	if !in.Scan() {
		return errors.New("no configuration on stdin")
	}
	cfg := in.Bytes()
	switch role {
	case "node":
		var c nodeConfig
		if err := json.Unmarshal(cfg, &c); err != nil {
			return err
		}
		return runNode(c, in)
	case "raw":
		return runRawServer(in)
	case "fleet":
		var c fleetConfig
		if err := json.Unmarshal(cfg, &c); err != nil {
			return err
		}
		return runFleet(c, in)
	}
	return fmt.Errorf("unknown role %q", role)
}

// serve answers the parent's commands until stdin closes.
func serve(in *bufio.Scanner, handle func(cmd []string) (string, error)) error {
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) == 0 {
			continue
		}
		ans, err := handle(f)
		if err != nil {
			return fmt.Errorf("%s: %w", f[0], err)
		}
		fmt.Println(f[0] + " " + ans)
	}
	return in.Err()
}

// memAnswer collects garbage, returns freed memory to the OS and reports
// "heapInuse stackInuse rss goroutines".
func memAnswer() string {
	for range 3 {
		runtime.GC()
	}
	debug.FreeOSMemory()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return fmt.Sprintf("%d %d %d %d", m.HeapInuse, m.StackInuse, rss(), runtime.NumGoroutine())
}

// openFDs returns the number of the process's open file descriptors.
func openFDs() int {
	fds, _ := os.ReadDir("/proc/self/fd")
	return len(fds)
}

// rss returns the process's resident set size from /proc/self/status.
func rss() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

// runNode runs a dataplane node with production defaults. It prints
// "ready <agent listener address>" once registered. Commands: mem; stats
// (tunnels, warnings, errors logged).
func runNode(c nodeConfig, in *bufio.Scanner) error {
	agentL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	privateL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	logs := newLogCounter("node "+c.NodeID, slog.LevelWarn)
	n, err := dataplane.New(dataplane.Options{
		NodeID: c.NodeID, Version: "bench", ControlPlaneURL: c.ControlPlaneURL, PrivateAPISecretKey: c.Key,
		AgentListener: agentL, PrivateAPIListener: privateL, Logger: slog.New(logs),
	})
	if err != nil {
		return err
	}
	go n.Run(context.Background())
	defer n.Close()
	if err := waitFor(30*time.Second, func() bool { return n.Ready(context.Background()) == nil }); err != nil {
		return fmt.Errorf("node not registered: %w", err)
	}
	fmt.Println("ready", agentL.Addr().String())
	return serve(in, func(cmd []string) (string, error) {
		switch cmd[0] {
		case "mem":
			return memAnswer(), nil
		case "stats":
			return fmt.Sprintf("%d %d %d %d", n.Tunnels(), logs.warns.Load(), logs.errs.Load(), openFDs()), nil
		case "profile":
			if len(cmd) != 2 {
				return "", errors.New("usage: profile <directory>")
			}
			return "written", writeProfiles(cmd[1], c.NodeID)
		case "cpuprofile":
			if len(cmd) != 2 {
				return "", errors.New("usage: cpuprofile <directory>|stop")
			}
			if cmd[1] == "stop" {
				pprof.StopCPUProfile()
				return "stopped", nil
			}
			f, err := os.Create(filepath.Join(cmd[1], c.NodeID+"-cpu.pprof"))
			if err != nil {
				return "", err
			}
			return "started", pprof.StartCPUProfile(f)
		}
		return "", fmt.Errorf("unknown command")
	})
}

// runRawServer is the memory baseline: the node's HTTP server settings
// (listen.NewServer) accepting plain WebSockets, each held by one reader
// goroutine, the least any WebSocket server keeps. It prints "ready
// <address>". Commands: mem; count.
func runRawServer(in *bufio.Scanner) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	var (
		count atomic.Int64
		mu    sync.Mutex
		held  []net.Conn
	)
	srv := listen.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{
			Subprotocols: []string{tunnel.Subprotocol}, InsecureSkipVerify: true,
			CompressionMode: websocket.CompressionDisabled,
		})
		if err != nil {
			return
		}
		nc := websocket.NetConn(context.Background(), c, websocket.MessageBinary)
		mu.Lock()
		held = append(held, nc)
		mu.Unlock()
		count.Add(1)
		go io.Copy(io.Discard, nc)
	}), nil)
	go srv.Serve(ln)
	defer srv.Close()
	fmt.Println("ready", ln.Addr().String())
	return serve(in, func(cmd []string) (string, error) {
		switch cmd[0] {
		case "mem":
			return memAnswer(), nil
		case "count":
			return strconv.FormatInt(count.Load(), 10), nil
		}
		return "", fmt.Errorf("unknown command")
	})
}

// runFleet runs agents (package agent, production defaults, one tunnel
// each) behind a load balancer of their own, or plain WebSockets. It
// prints "built" once every agent is configured, starts them on "go"
// (answer "go started"), and then answers: count (agents with a tunnel
// up); stats (handshakes refused with 503, other failed handshakes, LB
// connections no node took); first <t> (each agent's first connection
// attempt at or after t, in µs after t; t in Unix nanoseconds); attempts
// <t> (every attempt at or after t, in µs after t); died <t> (when each
// agent saw its first tunnel at or after t end, in µs after t); backoff <t>
// (for each agent, µs from that to its next attempt).
func runFleet(c fleetConfig, in *bufio.Scanner) error {
	if c.Raw {
		return runRawFleet(c, in)
	}
	lb, err := newBalancer(c.Backends)
	if err != nil {
		return err
	}
	defer lb.Close()
	up, upURL, err := newUpstream()
	if err != nil {
		return err
	}
	defer up.Close()
	dir, err := os.MkdirTemp("", "kas-bench-fleet-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	logs := &fleetLogs{}
	tries := newAttempts(len(c.Agents))
	agents := make([]*agent.Agent, len(c.Agents))
	for i, cr := range c.Agents {
		tokenFile := filepath.Join(dir, strconv.FormatInt(cr.ID, 10))
		if err := os.WriteFile(tokenFile, []byte(cr.Token), 0o600); err != nil {
			return err
		}
		if agents[i], err = agent.New(agent.Options{
			KASAddress: "ws://" + lb.Addr().String(), TokenFile: tokenFile, Tunnels: 1, Version: "bench",
			KubeAPIURL: upURL, Registry: prometheus.NewRegistry(), Logger: slog.New(&agentLogs{logs, tries, i}),
			// The agent's handshake transport asks Proxy once per
			// request, that is once per connection attempt: the
			// timestamp of every attempt, with nothing added to the
			// agent for it.
			Proxy: func(r *http.Request) (*url.URL, error) {
				tries.add(i)
				return http.ProxyFromEnvironment(r)
			},
		}); err != nil {
			return err
		}
	}
	fmt.Println("built")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	return serve(in, func(cmd []string) (string, error) {
		switch cmd[0] {
		case "go":
			for _, a := range agents {
				go a.Run(ctx)
			}
			return "started", nil
		case "count":
			n := 0
			for _, a := range agents {
				if a.Tunnels() > 0 {
					n++
				}
			}
			return strconv.Itoa(n), nil
		case "stats":
			return fmt.Sprintf("%d %d %d", logs.refused.Load(), logs.failed.Load(), lb.failed.Load()), nil
		case "first", "attempts", "died", "backoff":
			if len(cmd) != 2 {
				return "", errors.New("usage: first|attempts|died|backoff <unix nanoseconds>")
			}
			since, err := strconv.ParseInt(cmd[1], 10, 64)
			if err != nil {
				return "", err
			}
			return tries.answer(cmd[0], since), nil
		}
		return "", fmt.Errorf("unknown command")
	})
}

// attempts holds the wall-clock times (Unix nanoseconds: comparable with
// the parent's clock) of every agent's connection attempts and of the ends
// of its tunnels.
type attempts struct {
	mu    sync.Mutex
	tries [][]int64 // by agent, in order
	ends  [][]int64
}

func newAttempts(n int) *attempts {
	return &attempts{tries: make([][]int64, n), ends: make([][]int64, n)}
}

func (a *attempts) add(agent int) { a.record(a.tries, agent, time.Now()) }

func (a *attempts) ended(agent int, t time.Time) { a.record(a.ends, agent, t) }

func (a *attempts) record(by [][]int64, agent int, t time.Time) {
	a.mu.Lock()
	by[agent] = append(by[agent], t.UnixNano())
	a.mu.Unlock()
}

// firstFrom returns the first of ts at or after since.
func firstFrom(ts []int64, since int64) (int64, bool) {
	for _, t := range ts {
		if t >= since {
			return t, true
		}
	}
	return 0, false
}

// answer answers first, attempts, died and backoff (see runFleet), in µs.
func (a *attempts) answer(cmd string, since int64) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var b strings.Builder
	put := func(ns int64) {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(strconv.FormatInt(ns/1e3, 10))
	}
	for i := range a.tries {
		switch cmd {
		case "attempts":
			for _, t := range a.tries[i] {
				if t >= since {
					put(t - since)
				}
			}
		case "first":
			if t, ok := firstFrom(a.tries[i], since); ok {
				put(t - since)
			}
		case "died":
			if t, ok := firstFrom(a.ends[i], since); ok {
				put(t - since)
			}
		case "backoff":
			if end, ok := firstFrom(a.ends[i], since); ok {
				if t, ok := firstFrom(a.tries[i], end); ok {
					put(t - end)
				}
			}
		}
	}
	return b.String()
}

// agentLogs is one agent's log handler: it records when the agent's
// tunnels end and passes warnings on to the fleet's counters.
type agentLogs struct {
	*fleetLogs
	tries *attempts
	agent int
}

func (l *agentLogs) Enabled(_ context.Context, lvl slog.Level) bool { return lvl >= slog.LevelInfo }

func (l *agentLogs) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "tunnel closed" {
		l.tries.ended(l.agent, r.Time)
	}
	if r.Level < slog.LevelWarn {
		return nil
	}
	return l.fleetLogs.Handle(ctx, r)
}

func (l *agentLogs) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *agentLogs) WithGroup(string) slog.Handler      { return l }

// fleetLogs counts the agents' failed handshakes by kind.
type fleetLogs struct {
	refused, failed atomic.Int64
	printed         atomic.Int64
}

func (l *fleetLogs) Enabled(_ context.Context, lvl slog.Level) bool { return lvl >= slog.LevelWarn }

func (l *fleetLogs) Handle(_ context.Context, r slog.Record) error {
	switch {
	case strings.HasPrefix(r.Message, "the dataplane cannot take the tunnel now"):
		l.refused.Add(1)
	case strings.HasPrefix(r.Message, "could not open a tunnel"),
		strings.HasPrefix(r.Message, "the dataplane refused the agent token"):
		l.failed.Add(1)
	default:
		return nil
	}
	if l.printed.Add(1) <= maxPrinted {
		msg := "fleet: " + r.Message
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "err" {
				msg += " " + a.String()
			}
			return true
		})
		fmt.Fprintln(os.Stderr, msg)
	}
	return nil
}

func (l *fleetLogs) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *fleetLogs) WithGroup(string) slog.Handler      { return l }

// runRawFleet dials plain WebSockets, 32 at a time, and holds them. It
// prints "built" and dials on "go"; count answers how many are open.
func runRawFleet(c fleetConfig, in *bufio.Scanner) error {
	fmt.Println("built")
	var (
		open atomic.Int64
		next atomic.Int64
		mu   sync.Mutex
		held []net.Conn
	)
	url := "ws://" + c.Backends[0] + "/raw"
	return serve(in, func(cmd []string) (string, error) {
		switch cmd[0] {
		case "go":
			for range 32 {
				go func() {
					for next.Add(1) <= int64(len(c.Agents)) {
						ws, _, err := websocket.Dial(context.Background(), url, &websocket.DialOptions{
							Subprotocols: []string{tunnel.Subprotocol}, CompressionMode: websocket.CompressionDisabled,
						})
						if err != nil {
							fmt.Fprintln(os.Stderr, "raw fleet:", err)
							return
						}
						nc := websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
						go io.Copy(io.Discard, nc)
						mu.Lock()
						held = append(held, nc)
						mu.Unlock()
						open.Add(1)
					}
				}()
			}
			return "started", nil
		case "count":
			return strconv.FormatInt(open.Load(), 10), nil
		case "stats":
			return "0 0 0", nil
		}
		return "", fmt.Errorf("unknown command")
	})
}

// balancer is a TCP load balancer: each new connection goes to the first
// backend that accepts it, as a Service sends it to a ready endpoint.
type balancer struct {
	net.Listener
	backends []string
	failed   atomic.Int64 // connections no backend took
}

func newBalancer(backends []string) (*balancer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	b := &balancer{Listener: ln, backends: backends}
	go b.serve()
	return b, nil
}

func (b *balancer) serve() {
	for {
		c, err := b.Accept()
		if err != nil {
			return
		}
		go b.handle(c)
	}
}

func (b *balancer) handle(c net.Conn) {
	defer c.Close()
	var (
		up   net.Conn
		errs []error
	)
	for _, addr := range b.backends {
		var err error
		if up, err = net.DialTimeout("tcp", addr, 5*time.Second); err == nil {
			break
		}
		errs = append(errs, err)
	}
	if up == nil {
		if b.failed.Add(1) <= maxPrinted {
			fmt.Fprintln(os.Stderr, "balancer: no backend took the connection:", errors.Join(errs...))
		}
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		io.Copy(dst, src) // splice(2) between TCP sockets: no buffer here
		done <- struct{}{}
	}
	go pipe(up, c)
	go pipe(c, up)
	<-done // either side gone: close both
}

// writeProfiles writes the process's heap and goroutine profiles into dir.
func writeProfiles(dir, name string) error {
	runtime.GC()
	for _, p := range []string{"heap", "goroutine"} {
		f, err := os.Create(filepath.Join(dir, name+"-"+p+".pprof"))
		if err != nil {
			return err
		}
		err = pprof.Lookup(p).WriteTo(f, 0)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("write %s profile: %w", p, err)
		}
	}
	return nil
}
