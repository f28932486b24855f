package tunnel

import (
	"math/bits"
	"sync"
)

// Buffers come from size-classed pools (powers of two from 4 KiB to
// MaxMessageSize) and go back as soon as they are empty, so an idle tunnel
// or stream owns none.
const (
	minClassShift = 12 // 4 KiB
	maxClassShift = 20 // MaxMessageSize
)

var pools [maxClassShift - minClassShift + 1]sync.Pool

func classOf(n int) int {
	if n <= 1<<minClassShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minClassShift
}

// getBuf returns an empty slice with capacity at least n (n ≤ MaxMessageSize).
func getBuf(n int) []byte {
	c := classOf(n)
	if p, ok := pools[c].Get().(*[]byte); ok {
		return (*p)[:0]
	}
	return make([]byte, 0, 1<<(c+minClassShift))
}

// putBuf recycles a slice from getBuf.
func putBuf(b []byte) {
	c := classOf(cap(b))
	if c >= len(pools) || cap(b) != 1<<(c+minClassShift) {
		return
	}
	b = b[:0]
	pools[c].Put(&b)
}
