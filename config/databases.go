package config

import (
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
)

// DefaultDatabase is the name of the database DATABASE_URL reaches
// (GitLab's and Sourcegraph's first database are both "main"/"frontend";
// ferry's default is GitLab's).
const DefaultDatabase = "main"

// EnvDatabaseURLPrefix names more databases from the environment:
// DATABASE_URL_CI=postgres://... adds (or overrides) the database "ci".
// DATABASE_DIRECT_URL_CI is its direct URL.
const EnvDatabaseURLPrefix = "DATABASE_URL_"

// EnvDatabaseDirectURLPrefix is DATABASE_DIRECT_URL_<NAME>.
const EnvDatabaseDirectURLPrefix = "DATABASE_DIRECT_URL_"

// EnvDatabaseMigrationsPrefix is DATABASE_MIGRATIONS_<NAME>, the
// database's schema-migrations directory (databases.NAME.migrations), so
// that a configuration made of environment variables alone can give ci or
// codeintel their own directory. DATABASE_MIGRATIONS_MAIN is main's.
const EnvDatabaseMigrationsPrefix = "DATABASE_MIGRATIONS_"

// Database is one named PostgreSQL database ferry works on.
type Database struct {
	// Name is the key in `databases:` ("main", "ci", "codeintel").
	Name string `yaml:"-"`
	URL  string `yaml:"url"`
	// DirectURL bypasses a transaction pooler for `ferry db` (see
	// Config.DatabaseDirectURL).
	DirectURL string `yaml:"direct_url"`
	// Migrations is this database's schema-migrations directory ("" : the
	// --dir flag, default db/migrate).
	Migrations string `yaml:"migrations"`
}

var databaseName = regexp.MustCompile(`^[a-z][a-z0-9_]{0,62}$`)

// ValidDatabaseName reports whether name can name a database: lower-case
// letters, digits and '_', starting with a letter (as GitLab's
// db_config_name and Sourcegraph's schema names are).
func ValidDatabaseName(name string) bool { return databaseName.MatchString(name) }

// applyDatabaseEnv reads DATABASE_URL_<NAME>, DATABASE_DIRECT_URL_<NAME>
// and DATABASE_MIGRATIONS_<NAME>.
func (c *Config) applyDatabaseEnv() {
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		if v == "" {
			continue
		}
		var name, field string
		for _, p := range []string{EnvDatabaseDirectURLPrefix, EnvDatabaseURLPrefix, EnvDatabaseMigrationsPrefix} {
			if strings.HasPrefix(k, p) {
				name, field = strings.ToLower(strings.TrimPrefix(k, p)), p
				break
			}
		}
		if name == "" {
			continue
		}
		if c.Databases == nil {
			c.Databases = map[string]Database{}
		}
		d := c.Databases[name]
		switch field {
		case EnvDatabaseDirectURLPrefix:
			d.DirectURL = v
			c.SetFrom("databases."+name+".direct_url", k)
		case EnvDatabaseURLPrefix:
			d.URL = v
			c.SetFrom("databases."+name+".url", k)
		default:
			d.Migrations = v
			c.SetFrom("databases."+name+".migrations", k)
		}
		c.Databases[name] = d
	}
}

// DatabaseList returns every configured database, the default ("main",
// from DATABASE_URL or databases.main) first, the others by name. It is
// empty when no database is configured.
func (c *Config) DatabaseList() []Database {
	var out []Database
	if main, ok := c.Database(DefaultDatabase); ok {
		out = append(out, main)
	}
	names := make([]string, 0, len(c.Databases))
	for n := range c.Databases {
		if n != DefaultDatabase {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		d := c.Databases[n]
		d.Name = n
		out = append(out, d)
	}
	return out
}

// DatabaseNames lists the configured databases' names, default first.
func (c *Config) DatabaseNames() []string {
	var names []string
	for _, d := range c.DatabaseList() {
		names = append(names, d.Name)
	}
	return names
}

// Database returns the named database. The default one merges
// DatabaseURL/DatabaseDirectURL (which win) with databases.main.
func (c *Config) Database(name string) (Database, bool) {
	d, ok := c.Databases[name]
	d.Name = name
	if name == DefaultDatabase {
		if c.DatabaseURL != "" {
			d.URL = c.DatabaseURL
		}
		if c.DatabaseDirectURL != "" {
			d.DirectURL = c.DatabaseDirectURL
		}
		ok = d.URL != ""
	}
	return d, ok
}

// UnknownDatabaseError names a database that is not configured, and the
// ones that are.
type UnknownDatabaseError struct {
	Name  string
	Known []string
}

func (e *UnknownDatabaseError) Error() string {
	if len(e.Known) == 0 {
		return fmt.Sprintf("unknown database %q: no database is configured (set DATABASE_URL or databases: in the config file)", e.Name)
	}
	return fmt.Sprintf("unknown database %q: configured databases are %s", e.Name, strings.Join(e.Known, ", "))
}

// Is makes errors.Is(err, ErrInvalid) true: a bad --db is bad usage.
func (e *UnknownDatabaseError) Is(target error) bool { return target == ErrInvalid }

// SelectDatabases resolves a --db value: "" selects every database, "all"
// too, a name (or comma-separated names) selects those.
func (c *Config) SelectDatabases(sel string) ([]Database, error) {
	all := c.DatabaseList()
	if sel == "" || sel == "all" {
		return all, nil
	}
	var out []Database
	seen := map[string]bool{}
	for _, n := range strings.Split(sel, ",") {
		n = strings.TrimSpace(n)
		d, ok := c.Database(n)
		if !ok {
			return nil, &UnknownDatabaseError{Name: n, Known: c.DatabaseNames()}
		}
		if !seen[n] { // main,main is main once
			seen[n] = true
			out = append(out, d)
		}
	}
	return out, nil
}

// validateDatabases checks databases: names and URLs. For "main",
// database_url (and DATABASE_URL, --database-url) wins over
// databases.main.url.
func (c *Config) validateDatabases() error {
	for name, d := range c.Databases {
		field := "databases." + name
		if !ValidDatabaseName(name) {
			return &FieldError{Field: field, Msg: "a database name is lower-case letters, digits and _, starting with a letter (e.g. main, ci, codeintel)"}
		}
		if d.URL == "" && !(name == DefaultDatabase && c.DatabaseURL != "") {
			return &FieldError{Field: field + ".url", Msg: "is empty (or set " + EnvDatabaseURLPrefix + strings.ToUpper(name) + ")"}
		}
		if d.URL != "" {
			if _, err := pgxpool.ParseConfig(d.URL); err != nil {
				return &FieldError{Field: c.FieldName(field+".url", field+".url"), Msg: "not a valid libpq URL or DSN: " + redactErr(err)}
			}
		}
		if d.DirectURL != "" {
			if _, err := pgxpool.ParseConfig(d.DirectURL); err != nil {
				return &FieldError{Field: c.FieldName(field+".direct_url", field+".direct_url"), Msg: "not a valid libpq URL or DSN: " + redactErr(err)}
			}
		}
	}
	return nil
}
