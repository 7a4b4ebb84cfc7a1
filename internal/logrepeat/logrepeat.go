// Package logrepeat decides when to log a condition that repeats: when it
// starts, every Every while it lasts, and when it ends. A worker whose
// Redis is down fails its heartbeat every second, and a migration held by
// an autovacuum is slowed at every batch; a line for each buried the logs.
package logrepeat

import (
	"sync"
	"time"
)

// Every is how often a condition that lasts is logged again.
const Every = time.Minute

// Log tracks conditions by key. The zero value is ready; it is safe for
// concurrent use.
type Log[K comparable] struct {
	mu sync.Mutex
	by map[K]*state
}

type state struct {
	since, logged time.Time
	n             int // times seen since
}

// On records the condition k at now; ok says to log it, since when it
// lasts and how often it was seen (this time included).
func (r *Log[K]) On(k K, now time.Time) (since time.Time, n int, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.by == nil {
		r.by = map[K]*state{}
	}
	s := r.by[k]
	if s == nil {
		s = &state{since: now, logged: now}
		r.by[k] = s
		ok = true
	} else if now.Sub(s.logged) >= Every {
		s.logged, ok = now, true
	}
	s.n++
	return s.since, s.n, ok
}

// Off ends the condition k; ok says it was on (log its end).
func (r *Log[K]) Off(k K) (since time.Time, n int, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.by[k]
	if s == nil {
		return time.Time{}, 0, false
	}
	delete(r.by, k)
	return s.since, s.n, true
}
