package batched

import (
	"encoding/json"
	"fmt"
	"strings"
)

// GitLab's wording, in one place: `bbm check`, the schema-migration gate
// and the web page print the same lines, and runbooks grep for them.

// FinalizeCommand is the ferry command that finalizes a configuration,
// quoted for bash/sh.
func FinalizeCommand(class, table, column string, args json.RawMessage) string {
	return "ferry bbm finalize " + ShellQuote(class) + " " + ShellQuote(table) + " " +
		ShellQuote(column) + " " + ShellQuote(string(args))
}

// GitLabFinalizeCommand is the rake form GitLab prints (commas escaped).
func GitLabFinalizeCommand(class, table, column string, args json.RawMessage) string {
	return fmt.Sprintf("sudo gitlab-rake gitlab:background_migrations:finalize[%s,%s,%s,'%s']",
		class, table, column, strings.ReplaceAll(string(args), ",", `\,`))
}

// UnfinishedHead is the first paragraph of GitLab's
// ensure_batched_background_migration_is_finished error: status, then the
// configuration as JSON.
func UnfinishedHead(status string, config any) string {
	cfg, _ := json.Marshal(config)
	return fmt.Sprintf("Expected batched background migration for the given configuration to be marked as 'finished', but it is '%s':\t%s\n\n",
		status, cfg)
}

// FinalizeAdvice is GitLab's advice that follows UnfinishedHead, with the
// command that finishes the migration.
func FinalizeAdvice(command string) string {
	return "Finalize it manually by running the following command in a `bash` or `sh` shell:\n\n\t" + command
}

// ShellQuote quotes s for sh unless it is plainly safe.
func ShellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("_-.:/=,@", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
