package dbmigrate

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"slices"
	"strings"
)

// Rolling back the code of a release leaves the database with migrations
// the older code does not know. The question the operator has is "make
// the database what the old code expects": revert exactly the applied
// migrations that the older release's migrations directory does not hold,
// with the current release's down files (the older release has none for
// them). Sourcegraph's runbook answers it with `sg migration leaves` in a
// source clone and one `downto -target=LEAF` per schema; here the older
// release's directory is enough.

// Release is what an older release's migrations directory holds.
type Release struct {
	Dir      string
	Versions map[Version]bool
	// Leaf is the newest version (what `sg migration leaves` prints for a
	// linear history).
	Leaf Version
	// Layout is "ferry" (<version>_<name>.up.sql files) or "sourcegraph"
	// (<version>[_name]/up.sql directories), or "mixed".
	Layout string
}

// sgDirRE is a Sourcegraph migration directory: migrations/<schema>/<version>
// or <version>_<name>, holding up.sql, down.sql and metadata.yaml.
var sgDirRE = regexp.MustCompile(`^([0-9]+)(?:_.*)?$`)

// LoadRelease reads which versions dir holds, in ferry's layout or in
// Sourcegraph's. Only the versions are read (not the SQL): the older
// release's files are never run. A directory with no migration at all is
// an error: it is more likely a wrong path than a release without
// migrations, and "revert everything" must not follow from a typo.
func LoadRelease(dir string) (*Release, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: release migrations directory %w", ErrBadSource, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%w: release migrations directory %s is not a directory", ErrBadSource, dir)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: release migrations directory %s: %w", ErrBadSource, dir, err)
	}
	r := &Release{Dir: dir, Versions: map[Version]bool{}, Leaf: "0"}
	ferry, sg := false, false
	add := func(s string) {
		v, err := ParseVersion(s)
		if err != nil || v == "0" {
			return
		}
		r.Versions[v] = true
		if v.Compare(r.Leaf) > 0 {
			r.Leaf = v
		}
	}
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() {
			m := sgDirRE.FindStringSubmatch(name)
			if m == nil {
				continue
			}
			if _, err := fs.Stat(os.DirFS(dir), name+"/up.sql"); err != nil {
				continue
			}
			sg = true
			add(m[1])
			continue
		}
		if m := fileRE.FindStringSubmatch(name); m != nil {
			ferry = true
			add(m[1])
		}
	}
	switch {
	case ferry && sg:
		r.Layout = "mixed"
	case sg:
		r.Layout = "sourcegraph"
	case ferry:
		r.Layout = "ferry"
	default:
		return nil, fmt.Errorf("%w: %s holds no migrations (neither <version>_<name>.up.sql files nor Sourcegraph's <version>/up.sql directories)", ErrBadSource, dir)
	}
	return r, nil
}

// ReleaseStep is one migration to revert.
type ReleaseStep struct {
	Migration *Migration
	Version   Version
	// Blocked says why it cannot be reverted ("" when it can).
	Blocked string
}

// ReleasePlan is what [Migrator.DownToRelease] would do.
type ReleasePlan struct {
	Release *Release
	// Steps, newest first: every applied (or dirty) version the release
	// does not hold.
	Steps []ReleaseStep
	// Unapplied are versions the release holds that are not applied: the
	// older code expects them; migrate with the older release's files.
	Unapplied []Version
	// Dirty, when set, is a dirty migration the release knows: going
	// down on top of a half-applied migration is refused.
	Dirty error
}

// Blocked lists the reasons steps cannot run.
func (p *ReleasePlan) Blocked() []string {
	var out []string
	for _, s := range p.Steps {
		if s.Blocked != "" {
			out = append(out, s.Blocked)
		}
	}
	if p.Dirty != nil {
		out = append(out, p.Dirty.Error())
	}
	return out
}

// Err is nil when every step can run, else an [ErrMissingDown] error
// listing every reason, so nothing runs and the operator sees all of them.
func (p *ReleasePlan) Err() error {
	b := p.Blocked()
	if len(b) == 0 {
		return nil
	}
	return fmt.Errorf("%w: cannot go down to release %s (leaf %s), nothing was reverted: %s", ErrMissingDown, p.Release.Dir, p.Release.Leaf, strings.Join(b, "; "))
}

func (m *Migrator) planRelease(st *state, r *Release) *ReleasePlan {
	p := &ReleasePlan{Release: r}
	set := map[Version]bool{}
	for v := range st.applied {
		if !r.Versions[v] {
			set[v] = true
		}
	}
	for v, a := range st.last {
		if a.Dirty && !r.Versions[v] {
			set[v] = true
		}
	}
	if d := st.dirty(); d != nil && r.Versions[d.Version] {
		p.Dirty = m.dirtyError(st, d)
	}
	vs := make([]Version, 0, len(set))
	for v := range set {
		vs = append(vs, v)
	}
	slices.SortFunc(vs, func(a, b Version) int { return b.Compare(a) })
	for _, v := range vs {
		mg := m.byV[v]
		s := ReleaseStep{Migration: mg, Version: v}
		switch {
		case mg == nil:
			s.Blocked = fmt.Sprintf("version %s is applied but has no files in %s (this release cannot revert it)", v, m.o.Dir)
		case mg.DownFile == "":
			s.Blocked = fmt.Sprintf("%s_%s has no down file (%s does not exist)", v, mg.Name, joinDir(m.o.Dir, mg.ID()+".down.sql"))
		case mg.Down.Irreversible != "":
			s.Blocked = fmt.Sprintf("%s_%s is irreversible: %s (%s)", v, mg.Name, mg.Down.Irreversible, joinDir(m.o.Dir, mg.DownFile))
		}
		p.Steps = append(p.Steps, s)
	}
	for v := range r.Versions {
		if !st.applied[v] {
			p.Unapplied = append(p.Unapplied, v)
		}
	}
	slices.SortFunc(p.Unapplied, func(a, b Version) int { return a.Compare(b) })
	return p
}

// PlanRelease returns what DownToRelease(ctx, r) would revert, without
// locking or changing anything.
func (m *Migrator) PlanRelease(ctx context.Context, r *Release) (*ReleasePlan, error) {
	st, err := loadState(ctx, m.pool, false)
	if err != nil {
		return nil, err
	}
	return m.planRelease(st, r), nil
}

// DownToRelease reverts, newest first, every applied (or dirty) migration
// that r does not hold, with this release's down files. Nothing runs
// unless every step can (each has a down file that is not marked
// irreversible, and no migration r knows is dirty): a partial rollback
// would leave a schema neither release expects. The plan is computed
// again under the migration lock.
func (m *Migrator) DownToRelease(ctx context.Context, r *Release) ([]Version, error) {
	c, err := acquire(ctx, m.pool, m.o.ApplicationName, m.o.LockTimeout)
	if err != nil {
		return nil, err
	}
	defer c.release(ctx)
	st, err := loadState(ctx, c, true)
	if err != nil {
		return nil, err
	}
	p := m.planRelease(st, r)
	if err := p.Err(); err != nil {
		return nil, err
	}
	var done []Version
	for _, s := range p.Steps {
		if err := m.run(ctx, c, s.Migration, "down"); err != nil {
			return done, err
		}
		done = append(done, s.Version)
	}
	return done, nil
}
