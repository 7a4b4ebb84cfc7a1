package dbmigrate

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"unicode/utf8"
)

// Version is a migration version in canonical form: decimal digits without
// leading zeros. Versions compare as integers of any size.
type Version string

// ParseVersion accepts digits only (leading zeros are dropped, so
// "0042" and "42" are the same version). "0" is valid (meaning "nothing"
// as a downto target) but no migration file may use it.
func ParseVersion(s string) (Version, error) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return "", fmt.Errorf("%w: %q is not a version (digits only, e.g. 20151103134857)", ErrBadVersion, s)
	}
	s = strings.TrimLeft(s, "0")
	if s == "" {
		s = "0"
	}
	return Version(s), nil
}

// Compare orders versions numerically: -1, 0 or +1.
func (v Version) Compare(w Version) int {
	if len(v) != len(w) {
		if len(v) < len(w) {
			return -1
		}
		return 1
	}
	return strings.Compare(string(v), string(w))
}

// Migration is one version with its up and (optional) down SQL.
type Migration struct {
	Version Version
	Name    string
	// UpFile and DownFile are the file names ("" when missing).
	UpFile, DownFile string
	Up, Down         Script
}

// ID is "<version>_<name>", as in the file names.
func (m *Migration) ID() string { return string(m.Version) + "_" + m.Name }

// Script is the parsed content of one file.
type Script struct {
	SQL string
	// NoTransaction is set by a first line "-- ferry:no-transaction".
	NoTransaction bool
	// Require and Queue are the batched background migration gates.
	Require []BBM
	Queue   []BBM
	// Irreversible is set by "-- ferry:irreversible [why]" in a down file
	// (Rails' IrreversibleMigration): downto refuses to run it. It holds
	// the reason, or "marked -- ferry:irreversible".
	Irreversible string
}

// Statements splits the SQL into statements (for no-transaction scripts,
// which must run one statement per round trip).
func (s Script) Statements() []string { return splitStatements(s.SQL) }

var fileRE = regexp.MustCompile(`^([0-9]+)_(.+)\.(up|down)\.sql$`)

// Load reads every *.sql file in the root of fsys. Other files are ignored;
// a .sql file not named <version>_<name>.up|down.sql is an error, as are
// two files for one version and direction (1_x.up.sql and 01_x.up.sql),
// two names for one version and a down file without an up file, so typos
// surface before anything runs. Errors wrap [ErrBadSource] and name the
// file(s).
func Load(fsys fs.FS) ([]*Migration, error) { return load(fsys, "") }

// LoadDir is [Load] of a directory; errors name files with dir.
func LoadDir(dir string) ([]*Migration, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: migrations directory %w", ErrBadSource, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%w: migrations directory %s is not a directory", ErrBadSource, dir)
	}
	return load(os.DirFS(dir), dir)
}

func load(fsys fs.FS, dir string) ([]*Migration, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		if dir != "" {
			return nil, fmt.Errorf("%w: migrations directory %s: %w", ErrBadSource, dir, err)
		}
		return nil, fmt.Errorf("%w: %w", ErrBadSource, err)
	}
	file := func(name string) string { return joinDir(dir, name) }
	byVersion := map[Version]*Migration{}
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".sql") {
			continue
		}
		mm := fileRE.FindStringSubmatch(e.Name())
		if mm == nil {
			return nil, fmt.Errorf("%w: %s: migration files are named <version>_<name>.up.sql or <version>_<name>.down.sql (version: digits)", ErrBadSource, file(e.Name()))
		}
		v, _ := ParseVersion(mm[1])
		if v == "0" {
			return nil, fmt.Errorf("%w: %s: version must not be zero", ErrBadSource, file(e.Name()))
		}
		up := mm[3] == "up"
		m := byVersion[v]
		if m == nil {
			m = &Migration{Version: v, Name: mm[2]}
			byVersion[v] = m
		} else {
			other := m.UpFile
			if other == "" {
				other = m.DownFile
			}
			if m.Name != mm[2] {
				return nil, fmt.Errorf("%w: version %s has two names: %s and %s", ErrBadSource, v, file(other), file(e.Name()))
			}
			if prev := map[bool]string{true: m.UpFile, false: m.DownFile}[up]; prev != "" {
				return nil, fmt.Errorf("%w: duplicate version %s: %s and %s", ErrBadSource, v, file(prev), file(e.Name()))
			}
		}
		if err := regularFile(fsys, e); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrBadSource, file(e.Name()), err)
		}
		data, err := fs.ReadFile(fsys, e.Name())
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrBadSource, file(e.Name()), err)
		}
		sc, err := parseScript(string(data), up)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrBadSource, file(e.Name()), err)
		}
		if up {
			m.UpFile, m.Up = e.Name(), sc
		} else {
			m.DownFile, m.Down = e.Name(), sc
		}
	}
	if len(byVersion) == 0 {
		if err := noFilesButDirs(entries, dir); err != nil {
			return nil, err
		}
	}
	out := make([]*Migration, 0, len(byVersion))
	for _, m := range byVersion {
		if m.UpFile == "" {
			return nil, fmt.Errorf("%w: %s has no up file (%s)", ErrBadSource, file(m.DownFile), file(m.ID()+".up.sql"))
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version.Compare(out[j].Version) < 0 })
	return out, nil
}

// noFilesButDirs refuses a directory with no migration files but
// subdirectories: Sourcegraph's layout (<version>_<name>/up.sql), or a
// release's root holding one directory per database. Read as empty, it
// would say "up to date" with nothing applied.
func noFilesButDirs(entries []fs.DirEntry, dir string) error {
	var sg, other []string
	for _, e := range entries {
		switch {
		case !e.IsDir():
		case sgDirRE.MatchString(e.Name()):
			sg = append(sg, e.Name())
		default:
			other = append(other, e.Name())
		}
	}
	if dir == "" {
		dir = "the migrations directory"
	}
	switch {
	case len(sg) > 0:
		return fmt.Errorf("%w: %s holds migrations in Sourcegraph's layout (%s/up.sql), which `ferry db migrate` does not run: "+
			"it runs <version>_<name>.up.sql files (`ferry db leaves` and `downto --to-release` read both layouts)", ErrBadSource, dir, sg[0])
	case len(other) > 0:
		return fmt.Errorf("%w: %s has no migration files, only directories (%s): give the one of this database (--dir, or databases.NAME.migrations)",
			ErrBadSource, dir, strings.Join(other, ", "))
	}
	return nil
}

// regularFile refuses a migration file that is not a regular file, nor a
// symlink to one: reading a FIFO blocks until something writes to it (for
// ever), and a device such as /dev/zero never ends.
func regularFile(fsys fs.FS, e fs.DirEntry) error {
	mode := e.Type()
	if mode&fs.ModeSymlink != 0 {
		fi, err := fs.Stat(fsys, e.Name()) // follows the link
		if err != nil {
			return err
		}
		mode = fi.Mode()
	}
	if !mode.IsRegular() {
		return fmt.Errorf("migration files must be regular files, this is a %s", fileKind(mode))
	}
	return nil
}

// fileKind names a non-regular file mode in messages.
func fileKind(m fs.FileMode) string {
	switch {
	case m&fs.ModeNamedPipe != 0:
		return "named pipe (FIFO)"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeDevice != 0:
		return "device"
	case m.IsDir():
		return "directory"
	}
	return "special file (" + m.Type().String() + ")"
}

const directivePrefix = "-- ferry:"

func parseScript(sql string, up bool) (Script, error) {
	sc := Script{SQL: sql}
	for i, line := range strings.Split(sql, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, directivePrefix) {
			continue
		}
		rest := strings.TrimPrefix(line, directivePrefix)
		word, arg, _ := strings.Cut(rest, " ")
		switch word {
		case "no-transaction":
			if i != 0 {
				return sc, fmt.Errorf("line %d: -- ferry:no-transaction must be the first line", i+1)
			}
			sc.NoTransaction = true
		case "queue-bbm", "require-bbm":
			if !up {
				return sc, fmt.Errorf("line %d: %s%s belongs in an up file", i+1, directivePrefix, word)
			}
			b, err := parseBBM(arg)
			if err != nil {
				return sc, fmt.Errorf("line %d: %s%s: %w", i+1, directivePrefix, word, err)
			}
			if word == "queue-bbm" {
				sc.Queue = append(sc.Queue, b)
			} else {
				sc.Require = append(sc.Require, b)
			}
		case "irreversible":
			if up {
				return sc, fmt.Errorf("line %d: %s%s belongs in a down file", i+1, directivePrefix, word)
			}
			sc.Irreversible = strings.TrimSpace(arg)
			if sc.Irreversible == "" {
				sc.Irreversible = "marked " + directivePrefix + word
			}
		default:
			return sc, fmt.Errorf("line %d: unknown directive %s%s (known: no-transaction, queue-bbm, require-bbm, irreversible)", i+1, directivePrefix, word)
		}
	}
	return sc, nil
}

// parseBBM reads "CLASS TABLE COLUMN [ARGS_JSON]"; the JSON is the rest of
// the line, so it may contain spaces.
func parseBBM(s string) (BBM, error) {
	var b BBM
	if !utf8.ValidString(s) || strings.ContainsRune(s, 0) {
		// It would reach PostgreSQL as a raw encoding error.
		return b, fmt.Errorf("not valid UTF-8 text: %q", s)
	}
	fields := make([]string, 0, 3)
	s = strings.TrimSpace(s)
	for len(fields) < 3 && s != "" {
		f, rest, _ := strings.Cut(s, " ")
		fields = append(fields, f)
		s = strings.TrimSpace(rest)
	}
	if len(fields) < 3 {
		return b, fmt.Errorf("want CLASS TABLE COLUMN [ARGS_JSON]")
	}
	b.Class, b.Table, b.Column = fields[0], fields[1], fields[2]
	if s == "" {
		s = "[]"
	}
	var arr []json.RawMessage
	if err := json.Unmarshal([]byte(s), &arr); err != nil {
		return b, fmt.Errorf("ARGS_JSON must be a JSON array: %w", err)
	}
	var buf bytes.Buffer
	_ = json.Compact(&buf, []byte(s))
	b.Args = json.RawMessage(buf.Bytes())
	return b, nil
}

// splitStatements splits SQL at top-level semicolons, honouring quotes,
// quoted identifiers, dollar quotes and comments. Empty and comment-only
// statements are dropped.
func splitStatements(sql string) []string {
	var out []string
	start := 0
	onlyComments := true // nothing but comments/space since start
	flush := func(end int) {
		if s := strings.TrimSpace(sql[start:end]); s != "" && !onlyComments {
			out = append(out, s)
		}
		onlyComments = true
	}
	for i := 0; i < len(sql); {
		c := sql[i]
		switch {
		case c == '-' && strings.HasPrefix(sql[i:], "--"):
			j := strings.IndexByte(sql[i:], '\n')
			if j < 0 {
				i = len(sql)
			} else {
				i += j + 1
			}
			continue
		case c == '/' && strings.HasPrefix(sql[i:], "/*"):
			depth := 0
			for i < len(sql) {
				if strings.HasPrefix(sql[i:], "/*") {
					depth++
					i += 2
				} else if strings.HasPrefix(sql[i:], "*/") {
					depth--
					i += 2
					if depth == 0 {
						break
					}
				} else {
					i++
				}
			}
			continue
		case c == ';':
			flush(i)
			i++
			start = i
			continue
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
			continue
		}
		onlyComments = false
		switch {
		case c == '\'' || c == '"':
			escapes := c == '\'' && i > 0 && (sql[i-1] == 'E' || sql[i-1] == 'e')
			i++
			for i < len(sql) {
				if escapes && sql[i] == '\\' {
					i += 2
					continue
				}
				if sql[i] == c {
					if i+1 < len(sql) && sql[i+1] == c { // doubled quote
						i += 2
						continue
					}
					break
				}
				i++
			}
			i++
		case c == '$':
			if tag := dollarTag(sql[i:]); tag != "" {
				j := strings.Index(sql[i+len(tag):], tag)
				if j < 0 {
					i = len(sql)
				} else {
					i += len(tag) + j + len(tag)
				}
				continue
			}
			i++
		default:
			i++
		}
	}
	flush(len(sql))
	return out
}

var dollarRE = regexp.MustCompile(`^\$([A-Za-z_][A-Za-z_0-9]*)?\$`)

func dollarTag(s string) string { return dollarRE.FindString(s) }

// joinDir names a file of dir in messages.
func joinDir(dir, name string) string {
	if dir == "" {
		return name
	}
	return filepath.Join(dir, name)
}
