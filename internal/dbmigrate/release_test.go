package dbmigrate_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/ferrymigrate/ferry/internal/dbmigrate"
)

func touch(t *testing.T, path string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("-- x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// An older release's directory is read for its versions only, in ferry's
// layout or Sourcegraph's (<version>[_name]/up.sql); other entries are
// ignored, and a directory without any migration is an error.
func TestLoadRelease(t *testing.T) {
	sg := t.TempDir()
	touch(t, filepath.Join(sg, "1528395834_squashed_migrations", "up.sql"))
	touch(t, filepath.Join(sg, "1528395968", "up.sql"))
	touch(t, filepath.Join(sg, "1528395968", "metadata.yaml"))
	touch(t, filepath.Join(sg, "1528395999", "metadata.yaml")) // no up.sql: not a migration
	touch(t, filepath.Join(sg, "README.md"))
	r, err := dbmigrate.LoadRelease(sg)
	if err != nil {
		t.Fatal(err)
	}
	if r.Leaf != "1528395968" || len(r.Versions) != 2 || r.Layout != "sourcegraph" {
		t.Fatalf("sourcegraph: leaf %s, %d versions, layout %s", r.Leaf, len(r.Versions), r.Layout)
	}

	fy := t.TempDir()
	touch(t, filepath.Join(fy, "9_a.up.sql"))
	touch(t, filepath.Join(fy, "10_b.up.sql"))
	touch(t, filepath.Join(fy, "10_b.down.sql"))
	if r, err = dbmigrate.LoadRelease(fy); err != nil || r.Leaf != "10" || len(r.Versions) != 2 || r.Layout != "ferry" {
		t.Fatalf("ferry: %+v, %v", r, err)
	}

	empty := t.TempDir()
	touch(t, filepath.Join(empty, "notes.txt"))
	if _, err := dbmigrate.LoadRelease(empty); !errors.Is(err, dbmigrate.ErrBadSource) {
		t.Fatalf("empty release: %v, want ErrBadSource", err)
	}
	if _, err := dbmigrate.LoadRelease(filepath.Join(empty, "missing")); !errors.Is(err, dbmigrate.ErrBadSource) {
		t.Fatalf("missing release: %v, want ErrBadSource", err)
	}
}
