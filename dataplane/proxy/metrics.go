package proxy

import (
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics counts requests by the status answered and exposes the decision
// cache's counters at scrape time.
type metrics struct {
	p *Proxy

	requests, auth, authErrors, authEntries *prometheus.Desc

	mu     sync.Mutex
	byCode map[int]*atomic.Uint64
}

func newMetrics(p *Proxy) *metrics {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("kas_dataplane_proxy_"+name, help, labels, nil)
	}
	return &metrics{
		p:           p,
		requests:    d("requests_total", "Kubernetes API proxy requests by the status answered (code 0: the caller went away first).", "code"),
		auth:        d("auth_total", "Proxy authorization decisions by cache result: hit, miss (asked the control plane), shared (a miss that joined a call in flight).", "result"),
		authErrors:  d("auth_errors_total", "Proxy authorization calls to the control plane that failed."),
		authEntries: d("auth_cache_entries", "Proxy authorization decisions cached."),
		byCode:      make(map[int]*atomic.Uint64),
	}
}

// count records a request answered with code.
func (m *metrics) count(code int) {
	m.mu.Lock()
	c, ok := m.byCode[code]
	if !ok {
		c = new(atomic.Uint64)
		m.byCode[code] = c
	}
	m.mu.Unlock()
	c.Add(1)
}

func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.requests
	ch <- m.auth
	ch <- m.authErrors
	ch <- m.authEntries
}

func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	m.mu.Lock()
	codes := make(map[int]uint64, len(m.byCode))
	for code, c := range m.byCode {
		codes[code] = c.Load()
	}
	m.mu.Unlock()
	for code, v := range codes {
		ch <- prometheus.MustNewConstMetric(m.requests, prometheus.CounterValue, float64(v), strconv.Itoa(code))
	}
	s := m.p.Stats()
	ch <- prometheus.MustNewConstMetric(m.auth, prometheus.CounterValue, float64(s.AuthHits), "hit")
	ch <- prometheus.MustNewConstMetric(m.auth, prometheus.CounterValue, float64(s.AuthMisses-s.AuthShared), "miss")
	ch <- prometheus.MustNewConstMetric(m.auth, prometheus.CounterValue, float64(s.AuthShared), "shared")
	ch <- prometheus.MustNewConstMetric(m.authErrors, prometheus.CounterValue, float64(s.AuthErrors))
	ch <- prometheus.MustNewConstMetric(m.authEntries, prometheus.GaugeValue, float64(s.AuthEntries))
}
