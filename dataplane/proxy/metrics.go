package proxy

import (
	"strconv"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics counts requests by the status answered and exposes the decision
// cache's counters at scrape time.
type metrics struct {
	p *Proxy

	requests, auth, authErrors, authEntries, rateLimited *prometheus.Desc

	byCode [600]atomic.Uint64 // by HTTP status; 0: the caller went away
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
		rateLimited: d("auth_rate_limited_total", "Proxy requests refused with 429 without asking the control plane: their client had too many failed authentications."),
	}
}

// count records a request answered with code.
func (m *metrics) count(code int) {
	if code < 0 || code >= len(m.byCode) {
		code = 0
	}
	m.byCode[code].Add(1)
}

func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.requests
	ch <- m.auth
	ch <- m.authErrors
	ch <- m.authEntries
	ch <- m.rateLimited
}

func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	for code := range m.byCode {
		if v := m.byCode[code].Load(); v > 0 {
			ch <- prometheus.MustNewConstMetric(m.requests, prometheus.CounterValue, float64(v), strconv.Itoa(code))
		}
	}
	s := m.p.Stats()
	ch <- prometheus.MustNewConstMetric(m.auth, prometheus.CounterValue, float64(s.AuthHits), "hit")
	ch <- prometheus.MustNewConstMetric(m.auth, prometheus.CounterValue, float64(s.AuthMisses-s.AuthShared), "miss")
	ch <- prometheus.MustNewConstMetric(m.auth, prometheus.CounterValue, float64(s.AuthShared), "shared")
	ch <- prometheus.MustNewConstMetric(m.authErrors, prometheus.CounterValue, float64(s.AuthErrors))
	ch <- prometheus.MustNewConstMetric(m.authEntries, prometheus.GaugeValue, float64(s.AuthEntries))
	ch <- prometheus.MustNewConstMetric(m.rateLimited, prometheus.CounterValue, float64(s.RateLimited))
}
