package tunnel

import (
	"sync"
	"time"
)

// deadline is a settable point in time that waiters select on: done returns
// a channel closed once the deadline has passed. Setting a new deadline
// re-arms it. The zero value has no deadline.
type deadline struct {
	mu     sync.Mutex
	timer  *time.Timer
	ch     chan struct{} // closed when expired; nil until someone waits or it expires
	expire bool
	gen    uint64 // invalidates the callbacks of replaced timers
}

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.gen++
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	if d.expire {
		// Waiters on the old, closed channel have left; new ones get a
		// fresh channel. An open channel is kept: its waiters now wait
		// for the new deadline.
		d.expire = false
		d.ch = nil
	}
	if t.IsZero() {
		return
	}
	dur := time.Until(t)
	if dur <= 0 {
		d.expireLocked()
		return
	}
	gen := d.gen
	d.timer = time.AfterFunc(dur, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.gen == gen && !d.expire {
			d.expireLocked()
		}
	})
}

func (d *deadline) expireLocked() {
	d.expire = true
	if d.ch == nil {
		d.ch = closedChan
	} else {
		close(d.ch)
	}
}

// done returns a channel that is closed when the deadline passes.
func (d *deadline) done() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ch == nil {
		if d.expire {
			d.ch = closedChan
		} else {
			d.ch = make(chan struct{})
		}
	}
	return d.ch
}

func (d *deadline) expired() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.expire
}

func (d *deadline) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
}

var closedChan = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()
