package cli

import (
	"errors"
	"regexp"
	"strings"
)

// Runbooks hand operators GitLab's rake tasks, e.g.
//
//	sudo gitlab-rake gitlab:background_migrations:finalize[Class,table,id,'[["id"]\, ["x"]]']
//	sudo gitlab-rake gitlab:db:mark_migration_complete[20151103134857]
//
// and operators replace the `sudo gitlab-rake gitlab:background_migrations:`
// part with `ferry bbm ` (or keep it). This file reads those forms.

// mainDatabase is the name of ferry's one database (CONTRACT: DATABASE_URL
// is the default database, named main).
const mainDatabase = "main"

// ErrOtherDatabase: a pasted task names a database ferry does not have.
var ErrOtherDatabase = errors.New("unknown database")

// rakeCall is one pasted rake task: task[:db][[args]].
type rakeCall struct {
	Task     string   // finalize, show, mark_migration_complete, ...
	DB       string   // the :db suffix; "" when there is none
	Args     []string // the bracket's arguments, split on unescaped commas
	Brackets bool
	raw      string
}

var rakeRe = regexp.MustCompile(`^(?s)(?:(?:sudo\s+)?(?:gitlab-rake\s+)?gitlab:(?:background_migrations|db):)?` +
	`([a-z][a-z_-]*)(?::([A-Za-z0-9_]+))?(?:\[(.*)\])?$`)

// parseRake reads tok as a pasted rake task. ok is false for anything else,
// including a plain word ("finalize"), which is a subcommand name.
func parseRake(tok string) (rc rakeCall, ok bool) {
	m := rakeRe.FindStringSubmatchIndex(tok)
	if m == nil {
		return rakeCall{}, false
	}
	// mark-finished[...] as ferry spells the command, mark_finished[...]
	// as rake does: the same task.
	rc = rakeCall{Task: strings.ReplaceAll(tok[m[2]:m[3]], "-", "_"), raw: tok}
	if m[4] >= 0 {
		rc.DB = tok[m[4]:m[5]]
	}
	if m[6] >= 0 {
		rc.Brackets = true
		rc.Args = splitRakeArgs(tok[m[6]:m[7]])
	}
	prefixed := m[2] > 0
	if !prefixed && rc.DB == "" && !rc.Brackets {
		return rakeCall{}, false
	}
	return rc, true
}

// splitRakeArgs splits as rake does, on commas not escaped as `\,`, and
// drops the single quotes the shell leaves in when the whole task was
// pasted inside double quotes. Commas inside single quotes or inside the
// JSON arguments' brackets do not split either: operators paste
// '[["id"],["id_big"]]' without GitLab's escapes too.
func splitRakeArgs(s string) []string {
	var out []string
	var cur strings.Builder
	quoted, depth := false, 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\' && i+1 < len(s) && s[i+1] == ',':
			cur.WriteByte(',')
			i++
		case c == ',' && !quoted && depth == 0:
			out = append(out, cur.String())
			cur.Reset()
		default:
			switch {
			case c == '\'':
				quoted = !quoted
			case c == '[' && !quoted:
				depth++
			case c == ']' && !quoted && depth > 0:
				depth--
			}
			cur.WriteByte(c)
		}
	}
	out = append(out, cur.String())
	for i, a := range out {
		a = strings.TrimSpace(a)
		if len(a) >= 2 && a[0] == '\'' && a[len(a)-1] == '\'' {
			a = a[1 : len(a)-1]
		}
		out[i] = a
	}
	return out
}

// checkDB refuses a task for a database other than ferry's one (GitLab's
// finalize:ci[...] on a multi-database install).
func (rc rakeCall) checkDB() error {
	if rc.DB == "" || rc.DB == mainDatabase {
		return nil
	}
	return Usagef("%w: %s names database %q, but ferry has one database, %s (DATABASE_URL); drop the :%s or write :%s",
		ErrOtherDatabase, rc.raw, rc.DB, mainDatabase, rc.DB, mainDatabase)
}

// rakeCommands maps GitLab's task names to ferry's subcommands, per group.
var rakeCommands = map[string]map[string]string{
	"bbm": {"finalize": "finalize", "show": "show", "pause": "pause", "resume": "resume",
		"status": "status", "list": "list", "wait": "wait", "mark_finished": "mark-finished", "retry": "retry",
		"check": "check"}, // not GitLab's, but check:ci reads like its siblings
	"db": {"mark_migration_complete": "mark-complete"},
}

// rewriteRake turns `ferry bbm finalize[...]` (and the task with GitLab's
// prefix or a :main suffix) into `ferry bbm finalize finalize[...]`: the
// subcommand then reads its own rake form, as it does when the operator
// typed the subcommand name too. A task without arguments becomes the
// plain subcommand. Only the word right after the group is looked at.
func rewriteRake(args []string, valueFlag func(string) bool) ([]string, error) {
	group := -1
	for i := 0; i < len(args); i++ {
		s := args[i]
		if s == "--" {
			return args, nil
		}
		if strings.HasPrefix(s, "-") {
			if valueFlag(s) || (group >= 0 && (s == "--db" || s == "--database")) {
				i++
			}
			continue
		}
		if group >= 0 {
			return rewriteAt(args, i, rakeCommands[args[group]])
		}
		if rakeCommands[s] == nil {
			return args, nil
		}
		group = i
	}
	return args, nil
}

func rewriteAt(args []string, i int, cmds map[string]string) ([]string, error) {
	rc, ok := parseRake(args[i])
	if !ok {
		return args, nil
	}
	sub, ok := cmds[rc.Task]
	if !ok {
		return args, nil // cobra says "unknown command", naming it
	}
	bbm := cmds["finalize"] != ""
	if !bbm {
		if err := rc.checkDB(); err != nil {
			return nil, err
		}
	}
	// bbm's database names are known only once the configuration is read:
	// the subcommand checks the one a bracket form names (finalize:ci[...]),
	// and status:ci becomes status --db ci.
	repl := []string{sub}
	switch {
	case rc.Brackets:
		repl = append(repl, args[i])
	case bbm && rc.DB != "":
		repl = append(repl, "--db", rc.DB)
	}
	out := append(append(append([]string{}, args[:i]...), repl...), args[i+1:]...)
	return out, nil
}
