package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ferrymigrate/ferry/internal/batched"
)

// A migration is named by its id or by the configuration a runbook hands
// the operator: CLASS TABLE COLUMN ARGS_JSON, GitLab's rake form
// (finalize[CLASS,TABLE,COLUMN,ARGS], show[ID]) or the configuration hash
// `ferry bbm check` prints ({"job_class_name":...}).

// bbmRef is a parsed migration reference: an id, or a configuration.
type bbmRef struct {
	id  int64
	cfg *batched.MigrationConfig
	// db is the database the reference names (ci_10, finalize:ci[...]);
	// "" when it names none.
	db string
	// raw is the reference as typed, for messages.
	raw string
}

const refUsage = "ID, CLASS TABLE COLUMN ARGS_JSON, a rake form (finalize[CLASS,TABLE,COLUMN,ARGS_JSON], show[ID]) or the configuration hash `ferry bbm check` prints"

// idOrConfigArgs is the Args check of the commands that take a migration.
func idOrConfigArgs(cmd *cobra.Command, args []string) error {
	if len(args) != 1 && len(args) != 4 {
		return Usagef("%s takes %s", cmd.Name(), refUsage)
	}
	return nil
}

// parseRef reads the arguments checked by idOrConfigArgs, for a
// single-database ferry (main).
func parseRef(args []string) (bbmRef, error) {
	return parseRefIn(args, []string{mainDatabase})
}

// parseRef reads a reference against the configured databases.
func (a *App) parseRef(args []string) (bbmRef, error) {
	known := a.Cfg.DatabaseNames()
	if len(known) == 0 {
		known = []string{mainDatabase}
	}
	return parseRefIn(args, known)
}

// parseRefIn reads a reference whose database, if it names one, must be
// one of known.
func parseRefIn(args []string, known []string) (bbmRef, error) {
	ref, err := parseRefDB(args, known)
	if err == nil && ref.raw == "" {
		ref.raw = strings.Join(args, " ")
	}
	return ref, err
}

func parseRefDB(args []string, known []string) (bbmRef, error) {
	if len(args) == 4 {
		return configRef(args[0], args[1], args[2], args[3])
	}
	s := strings.TrimSpace(args[0])
	if strings.HasPrefix(s, "{") {
		var c batched.MigrationConfig
		if err := json.Unmarshal([]byte(s), &c); err != nil || c.Class == "" {
			return bbmRef{}, Usagef("%q is not a migration's configuration (job_class_name, table_name, column_name, job_arguments)", s)
		}
		return bbmRef{cfg: &c}, nil
	}
	if rc, ok := parseRake(s); ok {
		if rc.DB != "" {
			if err := checkDBName(rc.DB, s, known); err != nil {
				return bbmRef{}, err
			}
		}
		var ref bbmRef
		var err error
		switch len(rc.Args) {
		case 1:
			ref, err = idRef(rc.Args[0], known)
		case 4:
			ref, err = configRef(rc.Args[0], rc.Args[1], rc.Args[2], rc.Args[3])
		default:
			return bbmRef{}, Usagef("%s[...] needs an id or 4 arguments: job_class_name,table_name,column_name,job_arguments", rc.Task)
		}
		if err != nil {
			return ref, err
		}
		switch {
		case ref.db == "":
			ref.db = rc.DB
		case rc.DB != "" && rc.DB != ref.db:
			return bbmRef{}, Usagef("%s names database %s and id %s", s, rc.DB, rc.Args[0])
		}
		ref.raw = s
		return ref, nil
	}
	return idRef(s, known)
}
func configRef(class, table, column, args string) (bbmRef, error) {
	if err := batched.CheckConfig(class, table, column, []byte(args)); err != nil {
		return bbmRef{}, bbmErr(err)
	}
	if hint := pasteHint(args); hint != "" && !json.Valid([]byte(args)) {
		return bbmRef{}, bbmErr(fmt.Errorf("%w: %s is not JSON: %s", batched.ErrInvalidArgs, args, hint))
	}
	return bbmRef{cfg: &batched.MigrationConfig{Class: class, Table: table, Column: column, Args: json.RawMessage(args)}}, nil
}

// pasteHint explains job arguments that are not JSON because of how they
// were pasted: the shell removed their double quotes, or GitLab's \, (for
// rake's bracket form) was kept in a separate argument.
func pasteHint(args string) string {
	switch {
	case strings.Contains(args, `\,`):
		return `GitLab escapes the comma as \, only inside rake's brackets; as a separate argument write a plain comma: '[["id"], ["id_convert_to_bigint"]]'`
	case !strings.Contains(args, `"`) && strings.ContainsAny(args, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"):
		return `the shell removed its double quotes: put the whole argument in single quotes, e.g. '[["id"], ["id_convert_to_bigint"]]'`
	}
	return ""
}

// idRef reads an id, also as GitLab prints it for several databases
// (main_85, ci_10).
//
// A single argument with commas is the configuration as `ferry bbm
// status` prints it (CLASS,TABLE,COLUMN,ARGS_JSON), which GitLab's docs
// tell the operator to plug into finalize.
func idRef(s string, known []string) (bbmRef, error) {
	if strings.Contains(s, ",") {
		parts := splitRakeArgs(s)
		if len(parts) != 4 {
			return bbmRef{}, Usagef("%q has %d comma-separated parts; a configuration has 4, as `ferry bbm status` prints it "+
				"(CLASS,TABLE,COLUMN,ARGS_JSON); or give %s", s, len(parts), refUsage)
		}
		ref, err := configRef(parts[0], parts[1], parts[2], parts[3])
		ref.raw = s
		return ref, err
	}
	db, rest, prefixed := batched.SplitRef(s)
	if !prefixed || !isDigits(rest) {
		if !isDigits(strings.TrimPrefix(s, "-")) {
			return bbmRef{}, Usagef("migration id must be a positive integer, got %q; a migration is named by %s", s, refUsage)
		}
		id, err := parseID(s)
		return bbmRef{id: id}, err
	}
	if err := checkRefDB(db, s, rest, known); err != nil {
		return bbmRef{}, err
	}
	id, err := parseID(rest)
	return bbmRef{id: id, db: db}, err
}

// checkRefDB refuses the database of an id written db_ID (ci_10) that is
// not configured, saying how to write the id instead.
func checkRefDB(db, s, id string, known []string) error {
	if len(known) <= 1 && !slices.Contains(known, db) {
		return Usagef("%w: %s names database %q, but ferry has one database, %s (DATABASE_URL); write the id as %s or %s_%s",
			ErrOtherDatabase, s, db, mainDatabase, id, mainDatabase, id)
	}
	return checkDBName(db, s, known)
}

func isDigits(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
}

// resolve returns the id of the migration ref names.
func (r bbmRef) resolve(ctx context.Context, e *batched.Engine) (int64, error) {
	if r.cfg == nil {
		return r.id, nil
	}
	m, err := e.FindByConfig(ctx, r.cfg.Class, r.cfg.Table, r.cfg.Column, r.cfg.Args)
	if err != nil {
		return 0, bbmErr(err)
	}
	return m.ID, nil
}
