package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ferrymigrate/ferry/internal/dbmigrate"
)

// Rollback to what an older release knows: `ferry db leaves DIR` and
// `ferry db downto --to-release DIR` (see dbmigrate.LoadRelease).

// releaseDirFor is where, under an older release's DIR, database t's
// migrations are: DIR/NAME (Sourcegraph's migrations/frontend, ...), else
// DIR/<t's migrations directory> when that is relative (a release tree
// holding db/migrate or db/ci_migrate), else, with one database, DIR.
func (a *App) releaseDirFor(root string, t dbTarget) (string, error) {
	if fi, err := os.Stat(root); err != nil {
		return "", Usagef("release directory: %v", err)
	} else if !fi.IsDir() {
		return "", Usagef("release directory %s is not a directory", root)
	}
	cands := []string{filepath.Join(root, t.Name)}
	if !filepath.IsAbs(t.dir) {
		cands = append(cands, filepath.Join(root, t.dir))
	}
	if len(a.Cfg.DatabaseList()) == 1 {
		cands = append(cands, root)
	}
	for _, c := range cands {
		if fi, err := os.Stat(c); err == nil && fi.IsDir() {
			return c, nil
		}
	}
	return "", Usagef("release directory %s has no migrations for database %s: looked for %s", root, t.Name, strings.Join(cands, " and "))
}

func (a *App) loadRelease(root string, t dbTarget) (*dbmigrate.Release, error) {
	dir, err := a.releaseDirFor(root, t)
	if err != nil {
		return nil, err
	}
	r, err := dbmigrate.LoadRelease(dir)
	if err != nil {
		return nil, Usage(err)
	}
	return r, nil
}

// leafJSON is one line of `ferry db leaves --json`.
type leafJSON struct {
	Database   string `json:"database"`
	Leaf       string `json:"leaf,omitempty"`
	Dir        string `json:"dir,omitempty"`
	Migrations int    `json:"migrations"`
	Layout     string `json:"layout,omitempty"`
	Error      string `json:"error,omitempty"`
}

func dbLeavesCmd(a *App, f *dbFlags) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "leaves DIR",
		Short: "For each database, the newest migration an older release's migrations directory holds",
		Long: `Prints, for each database (--db selects), the newest version that an older
release's migrations directory holds: the target that "downto" takes to go
back to that release (what Sourcegraph's "sg migration leaves v3.36.0"
answers, without git or a source clone; ferry's migrations are linear, so
there is one leaf per database). It reads files only, no database; with
no database configured at all, every subdirectory of DIR holding
migrations is taken for one (migrations/frontend, ...).

DIR is the older release's migrations: for each database ferry uses
DIR/NAME if it exists (Sourcegraph's migrations/frontend,
migrations/codeintel, migrations/codeinsights), else DIR/<its migrations
directory> (databases.NAME.migrations or --dir, when relative: a release
tree holding db/migrate), else, with one database, DIR itself. Both
ferry's <version>_<name>.up.sql files and Sourcegraph's
<version>[_name]/up.sql directories count; only the versions are read.

"ferry db downto --to-release DIR" uses the same directories and reverts
exactly what the release does not know.`,
		Example: `  ferry db leaves /srv/app-v3.36.0/migrations
  ferry db leaves /srv/gitlab-16.11 --db ci --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(a.Cfg.DatabaseList()) == 0 && f.db == "" {
				return a.leavesUnconfigured(args[0], asJSON)
			}
			ts, err := a.dbTargets(cmd, f, selAll)
			if err != nil {
				return err
			}
			var all []leafJSON
			err = a.eachDB(ts, func(t dbTarget) error {
				r, err := a.loadRelease(args[0], t)
				if err != nil {
					all = append(all, leafJSON{Database: t.Name, Error: err.Error()})
					return err
				}
				all = append(all, leafJSON{Database: t.Name, Leaf: string(r.Leaf), Dir: r.Dir, Migrations: len(r.Versions), Layout: r.Layout})
				if !asJSON {
					// Always named: the answer is per database.
					fmt.Fprintf(a.Out, "%s: %s\t(%s: %d migrations)\n", t.Name, r.Leaf, r.Dir, len(r.Versions))
				}
				return nil
			})
			if asJSON {
				if perr := a.PrintJSON(all); perr != nil {
					return perr
				}
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "machine-readable output")
	return cmd
}

// leavesUnconfigured answers `leaves DIR` where no database is configured
// (an engineer's laptop, as `sg migration leaves` runs in a clone): every
// subdirectory of DIR that holds migrations is a database, by its name.
func (a *App) leavesUnconfigured(root string, asJSON bool) error {
	entries, err := os.ReadDir(root)
	if err != nil {
		return Usagef("release directory: %v", err)
	}
	var all []leafJSON
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		r, err := dbmigrate.LoadRelease(filepath.Join(root, e.Name()))
		if err != nil {
			continue // not a database's migrations
		}
		all = append(all, leafJSON{Database: e.Name(), Leaf: string(r.Leaf), Dir: r.Dir, Migrations: len(r.Versions), Layout: r.Layout})
	}
	if len(all) == 0 {
		return Usagef("no database is configured and %s has no subdirectory of migrations (frontend/, codeintel/, ...); configure the databases (databases: or DATABASE_URL) to read it", root)
	}
	if asJSON {
		return a.PrintJSON(all)
	}
	for _, l := range all {
		fmt.Fprintf(a.Out, "%s: %s\t(%s: %d migrations)\n", l.Database, l.Leaf, l.Dir, l.Migrations)
	}
	return nil
}

// releasePlan is one database's part of downto --to-release.
type releasePlan struct {
	t dbTarget
	m *dbmigrate.Migrator
	r *dbmigrate.Release
}

// downToRelease plans every selected database, prints the plans, and
// reverts only when every step of every one can run.
func (a *App) downToRelease(cmd *cobra.Command, f *dbFlags, root string, dry bool) error {
	ctx := cmd.Context()
	if root == "" {
		return Usagef("--to-release needs the older release's migrations directory")
	}
	ts, err := a.dbTargets(cmd, f, selExplicit)
	if err != nil {
		return err
	}
	var plans []releasePlan
	err = a.eachDB(ts, func(t dbTarget) error {
		r, err := a.loadRelease(root, t)
		if err != nil {
			return err
		}
		m, err := a.migrator(ctx, f, t, false)
		if err != nil {
			return err
		}
		p, err := m.PlanRelease(ctx, r)
		if err != nil {
			return dbErr(err)
		}
		printReleasePlan(ctx, t, m, p, dry)
		if err := p.Err(); err != nil {
			return dbErr(err)
		}
		plans = append(plans, releasePlan{t: t, m: m, r: r})
		return nil
	})
	if err != nil {
		if len(ts) > 1 || ts[0].named {
			fmt.Fprintf(a.Err, "ferry: nothing was reverted in any database: every database must be able to go back to release %s first (see above)\n", root)
		}
		return err
	}
	if dry {
		return nil
	}
	return a.eachDB(ts, func(t dbTarget) error {
		var p releasePlan
		for _, q := range plans {
			if q.t.Name == t.Name {
				p = q
			}
		}
		done, err := p.m.DownToRelease(ctx, p.r)
		if err != nil {
			return dbErr(err)
		}
		if len(done) == 0 {
			fmt.Fprintf(t.out, "Nothing to revert: every applied migration is in %s.\n", p.r.Dir)
		} else {
			fmt.Fprintf(t.out, "Reverted %d migration(s); every applied migration is now in %s (leaf %s).\n", len(done), p.r.Dir, p.r.Leaf)
		}
		return nil
	})
}

// printReleasePlan says, before anything runs, what downto --to-release
// would revert and what it cannot.
func printReleasePlan(ctx context.Context, t dbTarget, m *dbmigrate.Migrator, p *dbmigrate.ReleasePlan, dry bool) {
	w := t.out
	r := p.Release
	fmt.Fprintf(w, "Release %s holds %d migrations (%s layout), newest %s.\n", r.Dir, len(r.Versions), r.Layout, r.Leaf)
	if len(p.Steps) == 0 {
		fmt.Fprintln(w, "Nothing to revert: every applied migration is in the release.")
	} else {
		fmt.Fprintf(w, "To revert, newest first (%d):\n", len(p.Steps))
		for _, s := range p.Steps {
			switch {
			case s.Blocked != "":
				fmt.Fprintf(w, "  %s  CANNOT REVERT: %s\n", s.Version, s.Blocked)
			default:
				fmt.Fprintf(w, "  %s  %s (%s)\n", s.Version, s.Migration.Name, s.Migration.DownFile)
			}
		}
	}
	if p.Dirty != nil {
		fmt.Fprintf(w, "CANNOT REVERT: %v\n", p.Dirty)
	}
	if len(p.Unapplied) > 0 {
		vs := make([]string, len(p.Unapplied))
		for i, v := range p.Unapplied {
			vs[i] = string(v)
		}
		fmt.Fprintf(w, "Note: the release holds %s, not applied here; the older release's migrate applies them.\n", strings.Join(vs, ", "))
	}
	if dry && p.Err() == nil && len(p.Steps) > 0 {
		dp := &dbmigrate.Plan{Direction: "down"}
		for _, s := range p.Steps {
			dp.Migrations = append(dp.Migrations, s.Migration)
		}
		fmt.Fprintln(w)
		printPlan(ctx, w, m, dp, nil)
	}
}
