package dataplane

import (
	"github.com/prometheus/client_golang/prometheus"
)

// collector exposes the node's counters at scrape time, read from the
// parts that keep them (agent server, relay, resolver, authenticator,
// registrar), so nothing is counted twice.
type collector struct {
	n *Node

	tunnels, handshakes, tunnelsClosed, tunnelsRevoked          *prometheus.Desc
	streams, streamsReset, streamsRefused, tunnelBytes, rtt     *prometheus.Desc
	dials, relaysOut, relaysIn, relayBytes                      *prometheus.Desc
	routeLookups, routeStale, routeErrors, routeInval, routeLen *prometheus.Desc
	authChecks, authDenied, authStale, authErrors               *prometheus.Desc
	heartbeatAge, registered, pending, draining                 *prometheus.Desc
}

func newCollector(n *Node) *collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("kas_dataplane_"+name, help, labels, nil)
	}
	return &collector{
		n:              n,
		tunnels:        d("tunnels", "Agent tunnels open on this node."),
		handshakes:     d("tunnel_handshakes_total", "Tunnel handshakes by result: ok, unauthenticated (401), unavailable (503, control plane), draining (503), rate_limited (429, too many failed handshakes from the client), failed (not a valid upgrade).", "result"),
		tunnelsClosed:  d("tunnels_closed_total", "Tunnels that ended, any way."),
		tunnelsRevoked: d("tunnels_revoked_total", "Tunnels closed because their agent token was refused on a recheck."),
		streams:        d("tunnel_streams_total", "Tunnel streams by event: opened (by this node), accepted (opened by agents), closed. opened+accepted-closed is the number live; a growing gap is a leak.", "event"),
		streamsReset:   d("tunnel_streams_reset_total", "Tunnel streams aborted, by either side or an open timeout."),
		streamsRefused: d("tunnel_streams_refused_total", "Streams opened by agents that this node refused."),
		tunnelBytes:    d("tunnel_bytes_total", "Stream payload bytes through this node's tunnels, by direction: to_agent or from_agent.", "direction"),
		rtt:            d("tunnel_rtt_max_seconds", "Largest last keepalive round trip among open tunnels."),
		dials:          d("agent_dials_total", "Streams to agents by route (local, relay) or failure (not_connected, unreachable).", "result"),
		relaysOut:      d("relays_out_total", "Relay streams this node opened to other nodes, by result: ok, no_tunnel (the node had none), unreachable.", "result"),
		relaysIn:       d("relays_in_total", "Relay streams other nodes opened here, by result: ok, no_tunnel, invalid.", "result"),
		relayBytes:     d("relay_bytes_total", "Payload bytes relayed between nodes, by direction: out_sent, out_received (streams this node opened), in_received, in_sent (streams other nodes opened).", "direction"),
		routeLookups:   d("route_lookups_total", "Agent route lookups by cache result: hit or miss (asked the control plane).", "result"),
		routeStale:     d("route_stale_total", "Failed route lookups answered with an expired cached route."),
		routeErrors:    d("route_errors_total", "Failed route lookups with nothing cached."),
		routeInval:     d("route_invalidations_total", "Cached routes dropped after a relay found the tunnel gone."),
		routeLen:       d("route_cache_entries", "Agents whose routes are cached."),
		authChecks:     d("agent_auth_total", "Agent token checks by cache result: hit or miss (asked the control plane).", "result"),
		authDenied:     d("agent_auth_denied_total", "Agent tokens refused."),
		authStale:      d("agent_auth_stale_total", "Agent token checks the control plane could not answer, served from an earlier acceptance."),
		authErrors:     d("agent_auth_errors_total", "Agent token checks the control plane could not answer, with nothing to fall back on."),
		heartbeatAge:   d("heartbeat_age_seconds", "Time since the control plane last renewed this node's lease."),
		registered:     d("registered", "1 when the control plane knows this node."),
		pending:        d("tunnel_events_pending", "Tunnel opens and closes not yet confirmed by the control plane."),
		draining:       d("draining", "1 while the node drains."),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.tunnels, c.handshakes, c.tunnelsClosed, c.tunnelsRevoked,
		c.streams, c.streamsReset, c.streamsRefused, c.tunnelBytes, c.rtt,
		c.dials, c.relaysOut, c.relaysIn, c.relayBytes,
		c.routeLookups, c.routeStale, c.routeErrors, c.routeInval, c.routeLen,
		c.authChecks, c.authDenied, c.authStale, c.authErrors,
		c.heartbeatAge, c.registered, c.pending, c.draining,
	} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	n := c.n

	as := n.agents.Stats()
	gauge(c.tunnels, float64(as.Tunnels))
	counter(c.handshakes, as.Accepted, "ok")
	counter(c.handshakes, as.RefusedUnauthenticated, "unauthenticated")
	counter(c.handshakes, as.RefusedUnavailable, "unavailable")
	counter(c.handshakes, as.RefusedDraining, "draining")
	counter(c.handshakes, as.RefusedRateLimited, "rate_limited")
	counter(c.handshakes, as.Failed, "failed")
	counter(c.tunnelsClosed, as.Closed)
	counter(c.tunnelsRevoked, as.Revoked)
	counter(c.streams, as.Streams.StreamsOpened, "opened")
	counter(c.streams, as.Streams.StreamsAccepted, "accepted")
	counter(c.streams, as.Streams.StreamsClosed, "closed")
	counter(c.streamsReset, as.Streams.StreamsReset)
	counter(c.streamsRefused, as.Streams.StreamsRefused)
	counter(c.tunnelBytes, as.Streams.BytesOut, "to_agent")
	counter(c.tunnelBytes, as.Streams.BytesIn, "from_agent")
	gauge(c.rtt, as.Streams.RTT.Seconds())

	counter(c.dials, n.dials.local.Load(), "local")
	counter(c.dials, n.dials.relayed.Load(), "relay")
	counter(c.dials, n.dials.notConnected.Load(), "not_connected")
	counter(c.dials, n.dials.unreachable.Load(), "unreachable")

	ds := n.dialer.Stats()
	counter(c.relaysOut, ds.OK, "ok")
	counter(c.relaysOut, ds.NoTunnel, "no_tunnel")
	counter(c.relaysOut, ds.Unreachable, "unreachable")
	ss := n.relaySrv.Stats()
	counter(c.relaysIn, ss.OK, "ok")
	counter(c.relaysIn, ss.NotHere, "no_tunnel")
	counter(c.relaysIn, ss.Failed, "invalid")
	counter(c.relayBytes, ds.BytesOut, "out_sent")
	counter(c.relayBytes, ds.BytesIn, "out_received")
	counter(c.relayBytes, ss.BytesIn, "in_received")
	counter(c.relayBytes, ss.BytesOut, "in_sent")

	rs := n.resolver.Stats()
	counter(c.routeLookups, rs.Hits, "hit")
	counter(c.routeLookups, rs.Misses, "miss")
	counter(c.routeStale, rs.Stale)
	counter(c.routeErrors, rs.Errors)
	counter(c.routeInval, rs.Invalidations)
	gauge(c.routeLen, float64(rs.Entries))

	au := n.auth.Stats()
	counter(c.authChecks, au.Hits, "hit")
	counter(c.authChecks, au.Misses, "miss")
	counter(c.authDenied, au.Denied)
	counter(c.authStale, au.Stale)
	counter(c.authErrors, au.Errors)

	gauge(c.heartbeatAge, n.registrar.HeartbeatAge().Seconds())
	gauge(c.registered, b2f(n.registrar.Registered()))
	gauge(c.pending, float64(n.registrar.Pending()))
	gauge(c.draining, b2f(n.draining.Load()))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
