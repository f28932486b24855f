package main

import (
	"context"
	"testing"
)

// These benchmarks exist for profiling one figure of the table at a time:
//
//	go test -run X -bench Up/kas -cpuprofile cpu.out ./tests/bench/tunnel
func BenchmarkUp(b *testing.B)   { benchThroughput(b, true) }
func BenchmarkDown(b *testing.B) { benchThroughput(b, false) }

func benchThroughput(b *testing.B, up bool) {
	ctx := context.Background()
	const n = 16 << 20
	b.Run("raw", func(b *testing.B) {
		p, err := newRawPair(ctx)
		if err != nil {
			b.Fatal(err)
		}
		defer p.close()
		b.SetBytes(n)
		for b.Loop() {
			if _, err := p.throughput(n, up); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, c := range candidates {
		b.Run(c.name, func(b *testing.B) {
			h, err := newHarness(ctx, c)
			if err != nil {
				b.Fatal(err)
			}
			defer h.close()
			b.SetBytes(n)
			for b.Loop() {
				if _, err := h.throughput(ctx, n, up); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkOpenLatency(b *testing.B) {
	ctx := context.Background()
	for _, c := range candidates {
		b.Run(c.name, func(b *testing.B) {
			h, err := newHarness(ctx, c)
			if err != nil {
				b.Fatal(err)
			}
			defer h.close()
			for b.Loop() {
				d, err := h.openLatency(ctx, 5000)
				if err != nil {
					b.Fatal(err)
				}
				p := percentilesOf(d)
				b.ReportMetric(float64(p.p50.Microseconds()), "p50-µs")
				b.ReportMetric(float64(p.p99.Microseconds()), "p99-µs")
			}
		})
	}
}
