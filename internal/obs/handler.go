package obs

import (
	"context"
	"io"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewRegistry returns a Prometheus registry with the Go runtime and process
// collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Options configure the observability handler.
type Options struct {
	// Registry is served on /metrics.
	Registry *prometheus.Registry
	// Ready reports whether the process can take traffic (the control plane:
	// the database answers; a dataplane: not draining). nil means always.
	Ready func(ctx context.Context) error
	// ReadyTimeout bounds one Ready call. Default 3 s.
	ReadyTimeout time.Duration
}

// Handler serves /metrics, /livez, /readyz and /debug/pprof/.
//
// /livez answers 200 while the process serves HTTP at all. /readyz answers
// 200 "ok" when Ready returns nil and 503 with the reason otherwise.
func Handler(o Options) http.Handler {
	if o.ReadyTimeout == 0 {
		o.ReadyTimeout = 3 * time.Second
	}
	mux := http.NewServeMux()
	reg := o.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if o.Ready != nil {
			ctx, cancel := context.WithTimeout(r.Context(), o.ReadyTimeout)
			defer cancel()
			if err := o.Ready(ctx); err != nil {
				w.Header().Set("Content-Type", "text/plain; charset=utf-8")
				w.WriteHeader(http.StatusServiceUnavailable)
				io.WriteString(w, "not ready: "+err.Error()+"\n")
				return
			}
		}
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// HTTPMetrics counts and times the requests of one server (label server,
// e.g. "controlplane"): kas_http_requests_total{server,code,method},
// kas_http_request_duration_seconds{server} and
// kas_http_requests_in_flight{server}. The path is not a label, so unknown
// paths cannot blow up the series count; Connect-level metrics belong in
// interceptors.
func HTTPMetrics(reg prometheus.Registerer, server string, next http.Handler) http.Handler {
	labels := prometheus.Labels{"server": server}
	total := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kas_http_requests_total", Help: "HTTP requests served, by status code and method.", ConstLabels: labels,
	}, []string{"code", "method"})
	dur := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "kas_http_request_duration_seconds", Help: "Time to serve an HTTP request (streams included).",
		ConstLabels: labels, Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10),
	}, nil)
	inflight := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "kas_http_requests_in_flight", Help: "HTTP requests being served.", ConstLabels: labels,
	})
	reg.MustRegister(total, dur, inflight)
	return promhttp.InstrumentHandlerInFlight(inflight,
		promhttp.InstrumentHandlerDuration(dur,
			promhttp.InstrumentHandlerCounter(total, next)))
}
