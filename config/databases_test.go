package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrymigrate/ferry/config"
)

func TestDatabasesFromFileAndEnv(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ferry.yml")
	yml := "databases:\n  main:\n    url: postgres://file/main\n    migrations: db/migrate\n  ci:\n    url: postgres://file/ci\n    migrations: db/ci_migrate\n"
	if err := os.WriteFile(path, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DATABASE_URL", "postgres://env/main")
	t.Setenv("DATABASE_URL_CODEINTEL", "postgres://env/codeintel")
	c := config.Defaults()
	if err := c.LoadFile(path); err != nil {
		t.Fatal(err)
	}
	c.ApplyEnv()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	got := c.DatabaseList()
	want := []config.Database{
		{Name: "main", URL: "postgres://env/main", Migrations: "db/migrate"},
		{Name: "ci", URL: "postgres://file/ci", Migrations: "db/ci_migrate"},
		{Name: "codeintel", URL: "postgres://env/codeintel"},
	}
	if len(got) != len(want) {
		t.Fatalf("DatabaseList() = %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("DatabaseList()[%d] = %+v, want %+v", i, got[i], want[i])
		}
	}
	sel, err := c.SelectDatabases("ci")
	if err != nil || len(sel) != 1 || sel[0].Name != "ci" {
		t.Errorf("SelectDatabases(ci) = %+v, %v", sel, err)
	}
	if twice, err := c.SelectDatabases("ci,ci"); err != nil || len(twice) != 1 {
		t.Errorf("SelectDatabases(ci,ci) = %+v, %v; want ci once", twice, err)
	}
	if all, _ := c.SelectDatabases("all"); len(all) != 3 {
		t.Errorf("SelectDatabases(all) = %d databases, want 3", len(all))
	}
	_, err = c.SelectDatabases("frontend")
	var ue *config.UnknownDatabaseError
	if !errors.As(err, &ue) || !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), "main, ci, codeintel") {
		t.Errorf("SelectDatabases(frontend) = %v, want an UnknownDatabaseError listing the names", err)
	}
}

func TestDatabasesValidation(t *testing.T) {
	cases := map[string]struct{ yml, field string }{
		"bad name":   {"databases:\n  CI-1:\n    url: postgres://x/ci\n", "databases.CI-1"},
		"no url":     {"databases:\n  ci:\n    migrations: x\n", "databases.ci.url"},
		"bad url":    {"databases:\n  ci:\n    url: 'postgres://x:notaport/ci'\n", "databases.ci.url"},
		"bad direct": {"databases:\n  ci:\n    url: postgres://x/ci\n    direct_url: 'postgres://x:notaport/ci'\n", "databases.ci.direct_url"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ferry.yml")
			if err := os.WriteFile(path, []byte(tc.yml), 0o600); err != nil {
				t.Fatal(err)
			}
			c := config.Defaults()
			if err := c.LoadFile(path); err != nil {
				t.Fatal(err)
			}
			err := c.Validate()
			var fe *config.FieldError
			if !errors.As(err, &fe) || fe.Field != tc.field {
				t.Fatalf("Validate() = %v, want a FieldError on %s", err, tc.field)
			}
		})
	}
}

// A configuration of environment variables alone gives each database its
// own migrations directory.
func TestDatabasesMigrationsFromEnv(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://env/main")
	t.Setenv("DATABASE_URL_CI", "postgres://env/ci")
	t.Setenv("DATABASE_MIGRATIONS_CI", "db/ci_migrate")
	t.Setenv("DATABASE_MIGRATIONS_MAIN", "db/main_migrate")
	c := config.Defaults()
	c.ApplyEnv()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	got := c.DatabaseList()
	want := []config.Database{
		{Name: "main", URL: "postgres://env/main", Migrations: "db/main_migrate"},
		{Name: "ci", URL: "postgres://env/ci", Migrations: "db/ci_migrate"},
	}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("DatabaseList() = %+v, want %+v", got, want)
	}
	// A directory without a URL is not a database.
	t.Setenv("DATABASE_MIGRATIONS_SEC", "db/sec")
	c = config.Defaults()
	c.ApplyEnv()
	var fe *config.FieldError
	if err := c.Validate(); !errors.As(err, &fe) || fe.Field != "databases.sec.url" || !strings.Contains(err.Error(), "DATABASE_URL_SEC") {
		t.Fatalf("Validate() = %v, want a FieldError on databases.sec.url naming DATABASE_URL_SEC", err)
	}
}
