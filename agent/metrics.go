package agent

import "github.com/prometheus/client_golang/prometheus"

// metrics are the agent's Prometheus metrics. Tunnel counts and stream and
// byte counters are read from the sessions at scrape time, so the data
// path pays nothing for them.
type metrics struct {
	a            *Agent
	connects     *prometheus.CounterVec
	replacements *prometheus.CounterVec
	tunnels      *prometheus.Desc
	streams      *prometheus.Desc
	bytes        *prometheus.Desc
	config       *prometheus.Desc
}

func newMetrics(a *Agent) *metrics {
	return &metrics{
		a: a,
		connects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentk_tunnel_connects_total",
			Help: "Tunnel connection attempts, by result: ok, unauthorized (401/403), unavailable (503/429), error.",
		}, []string{"result"}),
		replacements: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentk_tunnel_replacements_total",
			Help: "Tunnels replaced make-before-break, by reason: max_age, goaway, node (moved to a node of its own).",
		}, []string{"reason"}),
		tunnels: prometheus.NewDesc("agentk_tunnels",
			"Open tunnels, by state: active (takes new streams) or draining.", []string{"state"}, nil),
		streams: prometheus.NewDesc("agentk_tunnel_streams_total",
			"Streams the nodes opened on this agent's tunnels (one HTTP/1.1 connection each).", nil, nil),
		bytes: prometheus.NewDesc("agentk_tunnel_bytes_total",
			"Stream payload bytes, by direction: in (from the nodes) or out (to the nodes).", []string{"direction"}, nil),
		config: prometheus.NewDesc("agentk_config_version",
			"Version of the agent configuration applied last: 0 for none, -1 before the nodes delivered one.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	m.connects.Describe(ch)
	m.replacements.Describe(ch)
	ch <- m.tunnels
	ch <- m.streams
	ch <- m.bytes
	ch <- m.config
}

// Collect implements prometheus.Collector.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	m.connects.Collect(ch)
	m.replacements.Collect(ch)
	a := m.a
	a.mu.Lock()
	var active, draining int
	sum := a.finished
	for t := range a.tunnels {
		if t.draining {
			draining++
		} else {
			active++
		}
		st := t.sess.Stats()
		sum.StreamsAccepted += st.StreamsAccepted
		sum.BytesIn += st.BytesIn
		sum.BytesOut += st.BytesOut
	}
	a.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(m.tunnels, prometheus.GaugeValue, float64(active), "active")
	ch <- prometheus.MustNewConstMetric(m.tunnels, prometheus.GaugeValue, float64(draining), "draining")
	ch <- prometheus.MustNewConstMetric(m.streams, prometheus.CounterValue, float64(sum.StreamsAccepted))
	ch <- prometheus.MustNewConstMetric(m.bytes, prometheus.CounterValue, float64(sum.BytesIn), "in")
	ch <- prometheus.MustNewConstMetric(m.bytes, prometheus.CounterValue, float64(sum.BytesOut), "out")
	ch <- prometheus.MustNewConstMetric(m.config, prometheus.GaugeValue, float64(a.ConfigVersion()))
}
