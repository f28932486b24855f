package framework

import (
	"errors"
	"io"
	"net"
	"sync"
	"testing"
)

// conns tracks connections so they can be cut at once.
type conns struct {
	mu     sync.Mutex
	set    map[net.Conn]struct{}
	closed bool
}

func (c *conns) add(conn net.Conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	if c.set == nil {
		c.set = make(map[net.Conn]struct{})
	}
	c.set[conn] = struct{}{}
	return true
}

func (c *conns) remove(conn net.Conn) {
	c.mu.Lock()
	delete(c.set, conn)
	c.mu.Unlock()
}

// cut closes every tracked connection; with stop, later ones are refused.
func (c *conns) cut(stop bool) {
	c.mu.Lock()
	all := c.set
	c.set = nil
	if stop {
		c.closed = true
	}
	c.mu.Unlock()
	for conn := range all {
		conn.Close()
	}
}

// KillableListener is a listener whose accepted connections can all be cut
// at once, as when the process holding them is killed.
type KillableListener struct {
	net.Listener
	conns conns
}

// Listen opens a KillableListener on 127.0.0.1, port 0.
func Listen(t testing.TB) *KillableListener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return &KillableListener{Listener: l}
}

// Accept accepts and tracks a connection.
func (l *KillableListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.conns.add(c) {
			return &trackedConn{Conn: c, owner: &l.conns}, nil
		}
		c.Close()
	}
}

// Kill closes the listener and every connection it accepted, without any
// goodbye: peers see the connections reset.
func (l *KillableListener) Kill() {
	l.Listener.Close()
	l.conns.cut(true)
}

type trackedConn struct {
	net.Conn
	owner *conns
	once  sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() { c.owner.remove(c.Conn) })
	return c.Conn.Close()
}

// Proxy is a TCP proxy between clients and backends. Its Backends function
// names the addresses to try for each new connection, in order; the first
// that accepts gets it. Down cuts every connection and refuses new ones;
// Blackhole keeps connections open but silently drops everything, as a
// peer that vanished without closing (half-open).
type Proxy struct {
	l        net.Listener
	Backends func() []string
	conns    conns

	mu        sync.Mutex
	down      bool
	blackhole bool
	holes     chan struct{} // closed to release blackholed copies on Close
	wg        sync.WaitGroup
}

// NewProxy starts a proxy on 127.0.0.1, port 0. It is closed when the test ends.
func NewProxy(t testing.TB, backends func() []string) *Proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{l: l, Backends: backends, holes: make(chan struct{})}
	p.wg.Go(p.serve)
	t.Cleanup(p.Close)
	return p
}

// ProxyTo returns a proxy to one fixed address.
func ProxyTo(t testing.TB, addr string) *Proxy {
	return NewProxy(t, func() []string { return []string{addr} })
}

// Addr returns the proxy's address.
func (p *Proxy) Addr() string { return p.l.Addr().String() }

func (p *Proxy) serve() {
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		down := p.down
		p.mu.Unlock()
		if down || !p.conns.add(c) {
			c.Close()
			continue
		}
		p.wg.Go(func() { p.handle(c) })
	}
}

func (p *Proxy) handle(c net.Conn) {
	defer func() {
		p.conns.remove(c)
		c.Close()
	}()
	var b net.Conn
	for _, addr := range p.Backends() {
		var err error
		if b, err = net.Dial("tcp", addr); err == nil {
			break
		}
	}
	if b == nil || !p.conns.add(b) {
		if b != nil {
			b.Close()
		}
		return
	}
	defer func() {
		p.conns.remove(b)
		b.Close()
	}()
	var wg sync.WaitGroup
	wg.Go(func() { p.copy(b, c) })
	wg.Go(func() { p.copy(c, b) })
	wg.Wait()
}

// copy forwards src to dst; in blackhole mode it reads and drops.
func (p *Proxy) copy(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		p.mu.Lock()
		hole := p.blackhole
		p.mu.Unlock()
		if n > 0 && !hole {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if hole && !errors.Is(err, net.ErrClosed) {
				<-p.holes // a vanished peer never says goodbye
			}
			return
		}
		if err == io.EOF {
			return
		}
	}
}

// Down cuts every connection and refuses new ones until Up.
func (p *Proxy) Down() {
	p.mu.Lock()
	p.down = true
	p.mu.Unlock()
	p.conns.cut(false)
}

// Up accepts connections again.
func (p *Proxy) Up() {
	p.mu.Lock()
	p.down = false
	p.mu.Unlock()
}

// Blackhole drops all traffic from now on, in both directions, without
// closing anything.
func (p *Proxy) Blackhole() {
	p.mu.Lock()
	p.blackhole = true
	p.mu.Unlock()
}

// Close stops the proxy and cuts every connection.
func (p *Proxy) Close() {
	p.l.Close()
	p.mu.Lock()
	select {
	case <-p.holes:
	default:
		close(p.holes)
	}
	p.mu.Unlock()
	p.conns.cut(true)
	p.wg.Wait()
}
