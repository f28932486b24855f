// Package ratelimit limits failed authentications per client, so that a
// flood of wrong credentials from one client is refused cheaply — before
// the control plane is asked — once the client has used up its allowance.
//
// Each client has a token bucket holding at most Burst tokens, refilled by
// one token every Refill. A failed authentication takes a token; a client
// with less than one token is limited until the bucket refills that far.
// Successful authentications take nothing. An attempt reserves a token
// while it is in flight, so that a client never has more attempts in
// flight than tokens left: a flood sent all at once costs at most Burst
// questions before its failures limit it. An attempt that finds every
// token reserved waits for one of those in flight to end instead of being
// refused, so many good credentials arriving together from one address
// (users behind one NAT) are slowed, not refused. A client whose bucket is full
// again is forgotten, and at most MaxClients clients are tracked (the least
// recently failed are forgotten first), so that a flood from many addresses
// costs bounded memory.
//
// A client is its IP address; IPv6 clients are their /64 network, which one
// host usually has whole. Behind a load balancer or reverse proxy every
// request comes from the proxy's address, so the client is then read from
// X-Forwarded-For — but only when the TCP peer is a trusted proxy
// (Options.TrustedProxies). The address used is the rightmost one in
// X-Forwarded-For that is not itself a trusted proxy: the leftmost entries
// are whatever the client chose to send.
package ratelimit

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults.
const (
	DefaultBurst      = 20
	DefaultRefill     = time.Second
	DefaultMaxClients = 100_000
)

// Options configure a Limiter.
type Options struct {
	// Burst is how many failures a client may have in a row before it is
	// limited. Default DefaultBurst.
	Burst int
	// Refill is how often one failure is forgiven. Default DefaultRefill.
	Refill time.Duration
	// MaxClients bounds the clients tracked at once. Default
	// DefaultMaxClients (about 10 MB at most).
	MaxClients int
	// TrustedProxies are the networks of the proxies whose X-Forwarded-For
	// is believed. Empty (the default): the TCP peer is the client.
	TrustedProxies []netip.Prefix
	// Clock is the time source; default time.Now.
	Clock func() time.Time
}

// Validate checks o and fills defaults.
func (o *Options) Validate() error {
	var errs []error
	if o.Burst < 0 || o.Refill < 0 || o.MaxClients < 0 {
		errs = append(errs, fmt.Errorf("rate limit: burst (%d), refill (%v) and max clients (%d) must not be negative", o.Burst, o.Refill, o.MaxClients))
	}
	if o.Burst == 0 {
		o.Burst = DefaultBurst
	}
	if o.Refill == 0 {
		o.Refill = DefaultRefill
	}
	if o.MaxClients == 0 {
		o.MaxClients = DefaultMaxClients
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	return errors.Join(errs...)
}

// ParsePrefixes parses a comma-separated list of CIDRs or single IP
// addresses (as a /32 or /128), as in dataplane.trusted_proxies.
func ParsePrefixes(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if a, err := netip.ParseAddr(f); err == nil {
			a = a.Unmap()
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("%q is not an IP address or CIDR (for example 10.0.0.0/8 or 2001:db8::/64)", f)
		}
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// Limiter tracks failed authentications per client. It is safe for
// concurrent use. A nil *Limiter limits nothing.
type Limiter struct {
	opts Options

	mu      sync.Mutex
	clients map[netip.Addr]*list.Element // of *bucket
	lru     list.List                    // front: most recently failed

	limited, failures atomic.Uint64
}

type bucket struct {
	client  netip.Addr
	tokens  float64
	at      time.Time     // when tokens was computed
	pending int           // attempts in flight, each reserving a token
	wake    chan struct{} // closed and replaced when an attempt ends
}

// New validates opts and returns a Limiter.
func New(opts Options) (*Limiter, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	return &Limiter{opts: opts, clients: make(map[netip.Addr]*list.Element)}, nil
}

// Client returns the client of r: the TCP peer, or the address a trusted
// proxy put in X-Forwarded-For. A peer that is not an IP address (a unix
// socket) is the zero Addr, one client for all of them.
func (l *Limiter) Client(r *http.Request) netip.Addr {
	peer := parseAddr(r.RemoteAddr)
	if l == nil || len(l.opts.TrustedProxies) == 0 || !l.trusted(peer) {
		return key(peer)
	}
	hops := r.Header.Values("X-Forwarded-For")
	client := peer
	for i := len(hops) - 1; i >= 0; i-- {
		parts := strings.Split(hops[i], ",")
		for j := len(parts) - 1; j >= 0; j-- {
			a, err := netip.ParseAddr(strings.TrimSpace(parts[j]))
			if err != nil {
				return key(client) // garbage: stop at the last address we believe
			}
			client = a.Unmap()
			if !l.trusted(client) {
				return key(client)
			}
		}
	}
	return key(client)
}

func (l *Limiter) trusted(a netip.Addr) bool {
	for _, p := range l.opts.TrustedProxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// parseAddr reads the IP of a RemoteAddr (host:port, or a bare IP).
func parseAddr(s string) netip.Addr {
	if host, _, err := net.SplitHostPort(s); err == nil {
		s = host
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}
	}
	return a.Unmap().WithZone("")
}

// key is the bucket of an address: IPv6 addresses by their /64.
func key(a netip.Addr) netip.Addr {
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// refill brings b up to now; it reports whether the bucket is full.
func (l *Limiter) refill(b *bucket, now time.Time) bool {
	if d := now.Sub(b.at); d > 0 {
		b.tokens += float64(d) / float64(l.opts.Refill)
		b.at = now
	}
	if b.tokens >= float64(l.opts.Burst) {
		b.tokens = float64(l.opts.Burst)
		return true
	}
	return false
}

// Take asks whether client may be authenticated now and reserves a token
// for the attempt; the caller must call Done with its outcome. When every
// token the client has left is reserved by attempts in flight, Take waits
// for one of them to end (or ctx to). When client is limited, retryAfter
// is how long until it may try again, at least a second, and the refusal
// is counted.
func (l *Limiter) Take(ctx context.Context, client netip.Addr) (ok bool, retryAfter time.Duration) {
	if l == nil {
		return true, 0
	}
	for {
		now := l.opts.Clock()
		l.mu.Lock()
		e, found := l.clients[client]
		if found {
			l.lru.MoveToFront(e)
		} else {
			l.sweepLocked(now)
			if len(l.clients) >= l.opts.MaxClients {
				l.forgetLocked(l.lru.Back())
			}
			e = l.lru.PushFront(&bucket{client: client, tokens: float64(l.opts.Burst), at: now, wake: make(chan struct{})})
			l.clients[client] = e
		}
		b := e.Value.(*bucket)
		l.refill(b, now)
		switch {
		case b.tokens < 1:
			wait := time.Duration((1 - b.tokens) * float64(l.opts.Refill))
			l.mu.Unlock()
			l.limited.Add(1)
			return false, max(wait.Round(time.Second), time.Second)
		case b.tokens-float64(b.pending) >= 1:
			b.pending++
			l.mu.Unlock()
			return true, 0
		}
		wake := b.wake
		l.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			l.limited.Add(1)
			return false, time.Second
		}
	}
}

// Done ends an attempt Take allowed: a failed one keeps its token, any
// other outcome (a good credential, no answer) gives it back.
func (l *Limiter) Done(client netip.Addr, failed bool) {
	if l == nil {
		return
	}
	if failed {
		l.failures.Add(1)
	}
	now := l.opts.Clock()
	l.mu.Lock()
	defer l.mu.Unlock()
	e, found := l.clients[client]
	if !found {
		return // forgotten meanwhile (evicted): its waiters were woken then
	}
	b := e.Value.(*bucket)
	b.pending = max(b.pending-1, 0)
	if failed {
		l.refill(b, now)
		b.tokens--
	}
	close(b.wake)
	b.wake = make(chan struct{})
	if b.pending == 0 && l.refill(b, now) {
		l.forgetLocked(e)
	}
}

// sweepLocked forgets a few of the least recently failed clients whose
// buckets are full again and idle: as many as Take adds, so none stay long.
func (l *Limiter) sweepLocked(now time.Time) {
	for range 2 {
		e := l.lru.Back()
		if e == nil || e.Value.(*bucket).pending > 0 || !l.refill(e.Value.(*bucket), now) {
			return
		}
		l.forgetLocked(e)
	}
}

// forgetLocked drops a client; attempts waiting on it look again.
func (l *Limiter) forgetLocked(e *list.Element) {
	b := e.Value.(*bucket)
	delete(l.clients, b.client)
	l.lru.Remove(e)
	close(b.wake)
}

// Stats are a Limiter's counters.
type Stats struct {
	// Limited counts requests refused because their client was limited.
	Limited uint64
	// Failures counts failed authentications.
	Failures uint64
	// Clients is the number of clients tracked now.
	Clients int
}

// Stats returns the counters. A nil *Limiter has none.
func (l *Limiter) Stats() Stats {
	if l == nil {
		return Stats{}
	}
	l.mu.Lock()
	n := len(l.clients)
	l.mu.Unlock()
	return Stats{Limited: l.limited.Load(), Failures: l.failures.Load(), Clients: n}
}
