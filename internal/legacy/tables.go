package legacy

import (
	"context"
	"slices"
	"sync"
	"time"
)

// DefaultTablesTTL is how long a table found with its columns is trusted
// before it is looked up again. Only what was found is cached: a missing
// table or column is looked up again on every job, so one created after a
// failure is seen at once.
const DefaultTablesTTL = time.Minute

// Tables caches table and column lookups through pg_catalog, so that a
// drain of thousands of jobs on one table resolves it once, not twice per
// job. It is safe for concurrent use. A table dropped or renamed within
// the TTL fails at its UPDATE instead of at the lookup, with PostgreSQL's
// error; either way the job fails.
type Tables struct {
	ttl time.Duration
	now func() time.Time

	mu sync.Mutex
	m  map[string]*tableEntry
}

type tableEntry struct {
	t    *Table
	cols []string // columns known to exist
	at   time.Time
}

// NewTables returns an empty cache whose entries live ttl.
func NewTables(ttl time.Duration) *Tables {
	return &Tables{ttl: ttl, now: time.Now, m: map[string]*tableEntry{}}
}

// Resolve returns table name with cols checked to exist, from the cache
// when it can.
func (c *Tables) Resolve(ctx context.Context, db DB, name string, cols ...string) (*Table, error) {
	if t := c.cached(name, cols); t != nil {
		return t, nil
	}
	t, err := ResolveTable(ctx, db, name)
	if err != nil {
		return nil, err
	}
	if err := t.RequireColumns(ctx, db, cols...); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.m[name]
	if e == nil || e.t.OID != t.OID || c.now().Sub(e.at) > c.ttl {
		e = &tableEntry{t: t, at: c.now()}
		c.m[name] = e
	}
	for _, col := range cols {
		if !slices.Contains(e.cols, col) {
			e.cols = append(e.cols, col)
		}
	}
	return t, nil
}

func (c *Tables) cached(name string, cols []string) *Table {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.m[name]
	if e == nil || c.now().Sub(e.at) > c.ttl {
		return nil
	}
	for _, col := range cols {
		if !slices.Contains(e.cols, col) {
			return nil
		}
	}
	return e.t
}
