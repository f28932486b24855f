// Command tunnel benchmarks the tunnel between a dataplane node and agentk,
// and the stream multiplexers that could carry it, over a loopback
// WebSocket. It prints one table; every figure is a ratio to a baseline
// measured in the same run (the absolute value follows in parentheses).
//
//	go run ./tests/bench/tunnel          # full: 256 MiB transfers, 10,000 idle tunnels
//	go run ./tests/bench/tunnel -short   # under a minute: 64 MiB, 1,000 idle tunnels (or KAS_BENCH_SHORT=1)
//
// Both ends of every tunnel run in this process on the same cores, except
// for the idle-tunnel memory test, whose agents run in a child process so
// that only the node's end is measured.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

func main() {
	if os.Getenv(childEnv) != "" {
		if err := runChild(); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		return
	}
	short := flag.Bool("short", os.Getenv("KAS_BENCH_SHORT") == "1", "smaller runs, well under a minute (also KAS_BENCH_SHORT=1)")
	only := flag.String("only", "", "comma-separated candidates to run (default all: kas,yamux,smux)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	if err := run(*short, *only); err != nil {
		pprof.StopCPUProfile()
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type sizes struct {
	transfer   int64 // bytes per throughput run
	reps       int   // throughput runs; the median counts
	roundTrips int   // latency samples
	opens      int   // open+request+close samples
	stallEach  int64 // bytes per active stream in the stall test
	idle       int   // idle tunnels for the memory test
}

func run(short bool, only string) error {
	sz := sizes{transfer: 256 << 20, reps: 3, roundTrips: 20000, opens: 5000, stallEach: 64 << 20, idle: 10000}
	if short {
		sz = sizes{transfer: 64 << 20, reps: 3, roundTrips: 5000, opens: 2000, stallEach: 16 << 20, idle: 1000}
	}
	cands := candidates
	if only != "" {
		cands = nil
		for _, c := range candidates {
			if slices.Contains(strings.Split(only, ","), c.name) {
				cands = append(cands, c)
			}
		}
	}
	ctx := context.Background()
	start := time.Now()

	// Memory first, on a quiet heap.
	rawMem, err := idleMemory(ctx, nil, sz.idle)
	if err != nil {
		return fmt.Errorf("raw idle memory: %w", err)
	}
	mem := map[string]memResult{}
	for _, c := range cands {
		m, err := idleMemory(ctx, &c, sz.idle)
		if err != nil {
			return fmt.Errorf("%s idle memory: %w", c.name, err)
		}
		mem[c.name] = m
	}

	// Baselines and candidates run interleaved, round by round, so that load
	// from elsewhere on the machine hits them alike; medians count.
	raw, err := newRawPair(ctx)
	if err != nil {
		return err
	}
	defer raw.close()
	hs := map[string]*harness{}
	for _, c := range cands {
		h, err := newHarness(ctx, c)
		if err != nil {
			return err
		}
		defer h.close()
		hs[c.name] = h
	}
	type samples struct {
		up, down, alone, stalled, stalled8 []float64
		lat, openLat                       []time.Duration
	}
	var rawS samples
	var rawHandoff []float64
	res := map[string]*samples{}
	for _, c := range cands {
		res[c.name] = &samples{}
	}
	for range sz.reps {
		v, err := raw.throughput(sz.transfer, true)
		if err != nil {
			return fmt.Errorf("raw throughput: %w", err)
		}
		rawS.up = append(rawS.up, v)
		if v, err = raw.handoffThroughput(sz.transfer); err != nil {
			return fmt.Errorf("raw throughput: %w", err)
		}
		rawHandoff = append(rawHandoff, v)
		if v, err = raw.throughput(sz.transfer, false); err != nil {
			return fmt.Errorf("raw throughput: %w", err)
		}
		rawS.down = append(rawS.down, v)
		d, err := raw.latency(sz.roundTrips / sz.reps)
		if err != nil {
			return fmt.Errorf("raw latency: %w", err)
		}
		rawS.lat = append(rawS.lat, d...)
		for _, c := range cands {
			h, r := hs[c.name], res[c.name]
			if v, err = h.throughput(ctx, sz.transfer, true); err != nil {
				return fmt.Errorf("%s throughput: %w", c.name, err)
			}
			r.up = append(r.up, v)
			if v, err = h.throughput(ctx, sz.transfer, false); err != nil {
				return fmt.Errorf("%s throughput: %w", c.name, err)
			}
			r.down = append(r.down, v)
			if d, err = h.latency(ctx, sz.roundTrips/sz.reps); err != nil {
				return fmt.Errorf("%s latency: %w", c.name, err)
			}
			r.lat = append(r.lat, d...)
			if d, err = h.openLatency(ctx, sz.opens/sz.reps); err != nil {
				return fmt.Errorf("%s open latency: %w", c.name, err)
			}
			r.openLat = append(r.openLat, d...)
			for _, st := range []struct {
				stalled int
				dst     *[]float64
			}{{0, &r.alone}, {1, &r.stalled}, {8, &r.stalled8}} {
				if v, err = stallTest(ctx, c, st.stalled, sz.stallEach); err != nil {
					return fmt.Errorf("%s with %d stalled: %w", c.name, st.stalled, err)
				}
				*st.dst = append(*st.dst, v)
			}
		}
	}
	rawUp, rawDown, rawLat := median(rawS.up), median(rawS.down), percentilesOf(rawS.lat)
	rawHand := median(rawHandoff)
	type result struct {
		up, down               float64
		lat, openLat           percentiles
		alone, stalled, stall8 float64
	}
	out := map[string]result{}
	for name, r := range res {
		out[name] = result{
			up: median(r.up), down: median(r.down),
			lat: percentilesOf(r.lat), openLat: percentilesOf(r.openLat),
			alone: median(r.alone), stalled: median(r.stalled), stall8: median(r.stalled8),
		}
	}

	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "tunnel benchmark: loopback WebSocket, GOMAXPROCS=%d, short=%v; ratio to the baseline (absolute)\n", runtime.GOMAXPROCS(0), short)
	header := "metric\tbaseline"
	for _, c := range cands {
		header += "\t" + c.name
	}
	fmt.Fprintln(w, header+"\tgoal")
	row := func(metric, base, goal string, cell func(name string) string) {
		line := metric + "\t" + base
		for _, c := range cands {
			line += "\t" + cell(c.name)
		}
		fmt.Fprintln(w, line+"\t"+goal)
	}
	mibs := func(v, base float64) string { return fmt.Sprintf("%.2f (%.0f MiB/s)", v/base, v) }
	durs := func(v, base time.Duration) string { return fmt.Sprintf("%.2f (%s)", float64(v)/float64(base), us(v)) }
	row("1 stream agent→node (masked)", fmt.Sprintf("raw WS %.0f MiB/s", rawUp), "-",
		func(n string) string { return mibs(out[n].up, rawUp) })
	row("  same, vs WS + 1 handoff", fmt.Sprintf("raw WS→goroutine %.0f MiB/s", rawHand), "-",
		func(n string) string { return mibs(out[n].up, rawHand) })
	row("1 stream node→agent", fmt.Sprintf("raw WS %.0f MiB/s", rawDown), "-",
		func(n string) string { return mibs(out[n].down, rawDown) })
	row("round trip p50, open stream", "raw WS "+us(rawLat.p50), "-",
		func(n string) string { return durs(out[n].lat.p50, rawLat.p50) })
	row("round trip p99, open stream", "raw WS "+us(rawLat.p99), "-",
		func(n string) string { return durs(out[n].lat.p99, rawLat.p99) })
	row("open+round trip+close p50", "raw WS "+us(rawLat.p50), "-",
		func(n string) string { return durs(out[n].openLat.p50, rawLat.p50) })
	row("open+round trip+close p99", "raw WS "+us(rawLat.p99), "-",
		func(n string) string { return durs(out[n].openLat.p99, rawLat.p99) })
	row("4 streams, 1 stalled", "same mux, no stall", ">= 0.90",
		func(n string) string { return mibs(out[n].stalled, out[n].alone) })
	row("4 streams, 8 stalled", "same mux, no stall", "-",
		func(n string) string { return mibs(out[n].stall8, out[n].alone) })
	row(fmt.Sprintf("node memory/idle tunnel, %d", sz.idle), fmt.Sprintf("raw WS %s", kib(rawMem.perConn)), "<= 64 KiB",
		func(n string) string {
			return fmt.Sprintf("%.2f (%s, %.1f gor.)", mem[n].perConn/rawMem.perConn, kib(mem[n].perConn), mem[n].goroutines)
		})
	row("  of which heap", fmt.Sprintf("raw WS %s", kib(rawMem.heap)), "-",
		func(n string) string { return fmt.Sprintf("%.2f (%s)", mem[n].heap/rawMem.heap, kib(mem[n].heap)) })
	w.Flush()
	fmt.Fprintf(os.Stderr, "took %v\n", time.Since(start).Round(time.Second))
	return nil
}

func us(d time.Duration) string { return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond)) }
func kib(b float64) string      { return fmt.Sprintf("%.1f KiB", b/1024) }

func median(v []float64) float64 {
	slices.Sort(v)
	return v[len(v)/2]
}

type percentiles struct{ p50, p99 time.Duration }

func percentilesOf(d []time.Duration) percentiles {
	slices.Sort(d)
	return percentiles{p50: d[len(d)/2], p99: d[len(d)*99/100]}
}

// readN reads exactly n bytes into a reused buffer.
func readN(r io.Reader, n int64, buf []byte) error {
	for n > 0 {
		k, err := r.Read(buf[:min(int64(len(buf)), n)])
		n -= int64(k)
		if err != nil && n > 0 {
			return err
		}
	}
	return nil
}
