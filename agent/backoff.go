package agent

import "time"

// backoff is the delay between a tunnel's connection attempts: exponential,
// with full jitter (uniform in [0, min(max, base·2^attempt))), so that
// agents cut off together come back spread out. It is reset only when a
// tunnel stayed up for healthy: a node that accepts tunnels and drops them
// at once does not reset it (the reconnect storm of coder #12923).
//
// A backoff belongs to one goroutine.
type backoff struct {
	base, max time.Duration
	healthy   time.Duration
	rand      func(n int64) int64 // uniform in [0, n)

	attempt int
	since   time.Time // when the current tunnel came up; zero if none
}

// next returns the delay before the next attempt and counts the attempt.
func (b *backoff) next() time.Duration {
	ceil := b.max
	if b.attempt < 62 && b.base<<b.attempt > 0 && b.base<<b.attempt < b.max {
		ceil = b.base << b.attempt
	}
	b.attempt++
	return b.draw(ceil)
}

// rejected returns the delay after the node refused the agent's token: the
// backoff jumps to its maximum and the delay is drawn from [max/2, max), so
// a misconfigured agent knocks a few times a minute, not more.
func (b *backoff) rejected() time.Duration {
	b.attempt = 62
	return b.max/2 + b.draw(b.max-b.max/2)
}

// retryAfter returns the delay after a refusal that asked for at least ra
// (capped at the maximum): the backoff's own delay if that is longer,
// otherwise ra plus up to a quarter more, so agents told the same
// Retry-After do not come back at the same instant.
func (b *backoff) retryAfter(ra time.Duration) time.Duration {
	d := b.next()
	ra = min(ra, b.max)
	if d >= ra {
		return d
	}
	return ra + b.draw(ra/4)
}

// connected records that a tunnel came up at now.
func (b *backoff) connected(now time.Time) { b.since = now }

// ended records that the tunnel that came up last stopped serving at now.
// If it had been up for the healthy period, the backoff starts over.
func (b *backoff) ended(now time.Time) {
	if !b.since.IsZero() && now.Sub(b.since) >= b.healthy {
		b.attempt = 0
	}
	b.since = time.Time{}
}

func (b *backoff) draw(n time.Duration) time.Duration {
	if n <= 0 {
		return 0
	}
	return time.Duration(b.rand(int64(n)))
}

// jitter returns d scaled by a factor uniform in [1-f, 1+f).
func jitter(d time.Duration, f float64, rand func(int64) int64) time.Duration {
	span := time.Duration(float64(d) * 2 * f)
	if span <= 0 {
		return d
	}
	return d - span/2 + time.Duration(rand(int64(span)))
}
