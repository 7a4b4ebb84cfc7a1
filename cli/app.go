package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/ferrymigrate/ferry/config"
	"github.com/ferrymigrate/ferry/internal/batched"
	"github.com/ferrymigrate/ferry/process"
)

// Options extend the stock binary.
type Options struct {
	// Register adds your own classes next to the built-in ones.
	Register func(*Registries)
	// Version is printed by --version and sent in heartbeats.
	Version string
}

// Registries hold every class ferry can run, by their Sidekiq/GitLab names
// (see package process).
type Registries = process.Registries

// App is the state shared by subcommands: configuration, logger and lazily
// opened connections.
type App struct {
	Cfg     config.Config
	Log     *zap.Logger
	Out     io.Writer
	Err     io.Writer
	Reg     *Registries
	Version string

	configPath  string
	redisURL    string
	databaseURL string
	directURL   string
	logLevel    string
	// progressMode is --progress; errOut is stderr as the logger writes
	// it, so log lines do not break a progress bar.
	progressMode string
	errOut       *stderrGuard

	preValidate map[*cobra.Command]func(*config.Config)
	flagChecks  map[*cobra.Command]func() error

	// bbmDB is `ferry bbm --db` (--database): the databases a bbm command
	// reads, or the one it changes.
	bbmDB string

	once    sync.Mutex
	rdb     *redis.Client
	pools   map[string]*pgxpool.Pool // by database name
	engines map[string]*batched.Engine
	extra   []func()
}

// ExitError carries an exit code: 1 = the answer is no / it failed,
// 2 = bad usage or input.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit status %d", e.Code)
	}
	return e.Err.Error()
}
func (e *ExitError) Unwrap() error { return e.Err }

// Usage wraps err as bad input (exit 2).
func Usage(err error) error { return &ExitError{Code: 2, Err: err} }

// Usagef is Usage with formatting.
func Usagef(format string, a ...any) error { return Usage(fmt.Errorf(format, a...)) }

// No is a "the answer is no" exit (1) with an optional message.
func No(err error) error { return &ExitError{Code: 1, Err: err} }

// maxInt4 is the largest value of a PostgreSQL integer column. Larger flag
// values used to reach the database and come back as a raw encoding error
// with exit 1.
const maxInt4 = math.MaxInt32

// intRange bounds an integer flag, both ends included.
type intRange struct {
	flag   string
	lo, hi int64
}

// checkRange is a usage error naming the flag when v is outside [lo, hi].
func checkRange(r intRange, v int64) error {
	if v < r.lo {
		return Usagef("--%s: must be at least %d, got %d", r.flag, r.lo, v)
	}
	if v > r.hi {
		return Usagef("--%s: must be at most %d, got %d", r.flag, r.hi, v)
	}
	return nil
}

// checkIntFlags checks the integer flags given on the command line. A flag
// left out keeps its default (often 0 for "the engine's default"), but a
// given value must be in range: an explicit 0 must not silently become the
// default.
func checkIntFlags(cmd *cobra.Command, rs ...intRange) error {
	for _, r := range rs {
		f := cmd.Flags().Lookup(r.flag)
		if f == nil || !f.Changed {
			continue
		}
		v, err := strconv.ParseInt(f.Value.String(), 10, 64)
		if err != nil { // pflag parsed it already; cannot happen
			return Usagef("--%s: %v", r.flag, err)
		}
		if err := checkRange(r, v); err != nil {
			return err
		}
	}
	return nil
}

// errSilent is an exit whose message was already printed.
var errSilent = errors.New("")

// Main runs the ferry command line and returns the process exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer, opts Options) int {
	app := &App{Out: stdout, Err: stderr, Version: opts.Version, errOut: &stderrGuard{w: stderr}}
	if app.Version == "" {
		app.Version = "dev"
	}
	app.Reg = process.NewRegistries()
	if opts.Register != nil {
		opts.Register(app.Reg)
	}
	root := app.rootCmd()
	args, err := rewriteRake(goFlagArgs(root, args), takesValue(root.PersistentFlags()))
	if err == nil {
		root.SetArgs(negativeArgs(root, args))
		root.SetOut(stdout)
		root.SetErr(stderr)
		err = root.ExecuteContext(ctx)
	}
	app.Close()
	if err == nil {
		return 0
	}
	var ee *ExitError
	code := 1
	if errors.As(err, &ee) {
		code = ee.Code
	} else if isCobraUsage(err) || errors.Is(err, config.ErrInvalid) {
		code = 2
	}
	if msg := err.Error(); msg != "" {
		fmt.Fprintln(stderr, "ferry: "+msg)
	}
	return code
}

// negativeArgs lets negative numbers through as positional arguments, so
// that `ferry bbm set max-running -5` is refused by the command with a
// message naming the argument; pflag read "-5" as a shorthand flag
// ("unknown shorthand flag '5'"). When there is one, the command's
// positional arguments are moved, in order, behind a "--"; a negative
// number that is the value of a flag (--pause-ms -1) stays where it is.
func negativeArgs(root *cobra.Command, args []string) []string {
	if !slices.ContainsFunc(args, isNegativeNumber) {
		return args
	}
	cmd, _, err := root.Find(args)
	if err != nil || !cmd.Runnable() {
		return args
	}
	path := 0 // the subcommand names before the arguments
	for c := cmd; c != root; c = c.Parent() {
		path++
	}
	cmd.InheritedFlags() // merges the parents' persistent flags into Flags
	takesValue := takesValue(cmd.Flags())
	var lead, pos []string
	moved := false
	for i := 0; i < len(args); i++ {
		s := args[i]
		switch {
		case s == "--":
			pos = append(pos, args[i+1:]...)
			i = len(args)
		case isNegativeNumber(s):
			pos = append(pos, s)
			moved = true
		case strings.HasPrefix(s, "-") && len(s) > 1:
			lead = append(lead, s)
			if takesValue(s) && i+1 < len(args) {
				lead = append(lead, args[i+1])
				i++
			}
		case path > 0:
			lead = append(lead, s)
			path--
		default:
			pos = append(pos, s)
		}
	}
	if !moved {
		return args // every negative number was a flag's value
	}
	return append(append(lead, "--"), pos...)
}

// takesValue reports whether flag argument s ("--name", "-n") of flags is
// followed by its value.
func takesValue(flags *pflag.FlagSet) func(s string) bool {
	return func(s string) bool {
		if strings.Contains(s, "=") {
			return false
		}
		name, long := strings.CutPrefix(s, "--")
		f := flags.Lookup(name)
		if !long {
			f = nil
			if len(s) == 2 {
				f = flags.ShorthandLookup(s[1:])
			}
		}
		return f != nil && f.NoOptDefVal == ""
	}
}

// isNegativeNumber matches "-5", "-0.5" and "-1e3": never one of ferry's
// flags, which have no digit shorthands.
func isNegativeNumber(s string) bool {
	if len(s) < 2 || s[0] != '-' || s[1] < '0' || s[1] > '9' {
		return false
	}
	_, err := strconv.ParseFloat(s, 64)
	return err == nil
}

func (a *App) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "ferry",
		Short: "Run Sidekiq jobs and background data migrations through an upgrade",
		Long: `ferry is a Sidekiq-compatible worker and operator CLI for PostgreSQL
background migrations. It shares Redis with Ruby Sidekiq (same queues,
retry/scheduled/dead sets, heartbeats and Web UI) and loses no job when a
worker is killed.

Connections come from REDIS_URL and DATABASE_URL (or --redis-url and
--database-url); an optional YAML file (--config or FERRY_CONFIG) holds
the rest. Exit codes: 0 ok, 1 the answer is no or the operation failed,
2 bad usage or input.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       a.Version,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return a.load(cmd)
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&a.configPath, "config", "", "YAML config file (env FERRY_CONFIG)")
	pf.StringVar(&a.redisURL, "redis-url", "", "Redis URL (env REDIS_URL, default redis://127.0.0.1:6379/0)")
	pf.StringVar(&a.databaseURL, "database-url", "", "PostgreSQL URL or DSN (env DATABASE_URL)")
	pf.StringVar(&a.directURL, "database-direct-url", "", "PostgreSQL without a transaction pooler, for \"ferry db\" (env DATABASE_DIRECT_URL)")
	pf.StringVar(&a.logLevel, "log-level", "", "debug, info, warn or error")
	pf.StringVar(&a.progressMode, "progress", progressAuto, "progress of long work on stderr: auto (a bar on a terminal, else a line every 5s), bar, lines or none")
	root.AddCommand(newWorkerCmd(a), newEnqueueCmd(a), newSetupCmd(a), newBBMCmd(a), newBMCmd(a), newDBCmd(a),
		newWebCmd(a), newDemoCmd(a))
	rejectUnknownSubcommands(root)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return Usage(fmt.Errorf("%w\nrun '%s --help' for usage", err, c.CommandPath()))
	})
	return root
}

// rejectUnknownSubcommands makes every group command below the root
// (ferry bbm, ferry bbm set, ferry db, ...) refuse an unknown subcommand
// with exit 2. Cobra checks subcommand names only at the root: a group
// without a Run of its own printed its help and exited 0, so a typo in a
// runbook (`ferry bbm finalise ...`) looked like success. Without
// arguments a group still prints its help and exits 0, as before.
func rejectUnknownSubcommands(c *cobra.Command) {
	for _, sub := range c.Commands() {
		if sub.HasSubCommands() && !sub.Runnable() {
			// Args runs before the root's PersistentPreRunE, so neither
			// the help nor the error needs a valid configuration.
			sub.Args = func(cmd *cobra.Command, args []string) error {
				if len(args) == 0 {
					if err := cmd.Help(); err != nil {
						return err
					}
					return &ExitError{Code: 0, Err: errSilent}
				}
				msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
				if cmd.SuggestionsMinimumDistance <= 0 {
					cmd.SuggestionsMinimumDistance = 2 // cobra's default for the root
				}
				if s := cmd.SuggestionsFor(args[0]); args[0] != "" && len(s) > 0 {
					msg += "; did you mean " + strings.Join(s, " or ") + "?"
				}
				return Usagef("%s\nrun '%s --help' for usage", msg, cmd.CommandPath())
			}
			// Only reached if Args let it through; a group must be
			// runnable for cobra to call Args at all.
			sub.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
		}
		rejectUnknownSubcommands(sub)
	}
}

func (a *App) load(cmd *cobra.Command) error {
	for c := cmd; c != nil; c = c.Parent() {
		if check, ok := a.flagChecks[c]; ok {
			if err := check(); err != nil {
				return err
			}
		}
	}
	cfg := config.Defaults()
	cfg.LogLevel = "" // until a source sets it; see defaultLogLevel
	path := a.configPath
	if path == "" {
		path = config.ConfigPathFromEnv()
	}
	if path != "" {
		if err := cfg.LoadFile(path); err != nil {
			return Usage(err)
		}
	}
	cfg.ApplyEnv()
	if a.redisURL != "" {
		cfg.RedisURL = a.redisURL
		cfg.SetFrom(config.KeyRedisURL, "--redis-url")
	}
	if a.databaseURL != "" {
		cfg.DatabaseURL = a.databaseURL
		cfg.SetFrom(config.KeyDatabaseURL, "--database-url")
	}
	if a.directURL != "" {
		cfg.DatabaseDirectURL = a.directURL
		cfg.SetFrom(config.KeyDirectURL, "--database-direct-url")
	}
	if a.logLevel != "" {
		cfg.LogLevel = a.logLevel
		cfg.SetFrom(config.KeyLogLevel, "--log-level")
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = defaultLogLevel(cmd)
	}
	a.Cfg = cfg
	for c := cmd; c != nil; c = c.Parent() {
		if f, ok := a.preValidate[c]; ok {
			f(&a.Cfg)
		}
	}
	if err := a.Cfg.Validate(); err != nil {
		return Usage(err)
	}
	if err := a.checkProgressFlag(); err != nil {
		return err
	}
	log, err := newLogger(a.Cfg, a.errOut, isTerminal(a.Err))
	if err != nil {
		return Usage(err)
	}
	a.Log = log
	installRedisLogger(log)
	return nil
}

// defaultLogLevel is info for the long-running commands, whose logs are
// their output, and warn for the others: their results go to stdout, and
// a failure's first stderr line must be its error, not an info log line
// from before it (a failed `db migrate` began with "running migration").
func defaultLogLevel(cmd *cobra.Command) string {
	top := cmd
	for top.HasParent() && top.Parent().HasParent() {
		top = top.Parent()
	}
	switch top.Name() {
	case "worker", "web":
		return "info"
	}
	return "warn"
}

// PreValidate registers f to copy cmd's flags into the configuration
// before it is validated, so flag errors name the same fields as the file.
func (a *App) PreValidate(cmd *cobra.Command, f func(*config.Config)) {
	if a.preValidate == nil {
		a.preValidate = map[*cobra.Command]func(*config.Config){}
	}
	a.preValidate[cmd] = f
}

// CheckFlags registers check to run on cmd's (and its subcommands') flags
// before the configuration is loaded, so a bad flag is named even when
// the configuration is incomplete too.
func (a *App) CheckFlags(cmd *cobra.Command, check func() error) {
	if a.flagChecks == nil {
		a.flagChecks = map[*cobra.Command]func() error{}
	}
	a.flagChecks[cmd] = check
}

// newLogger logs to w; tty says whether w ends on a terminal.
func newLogger(cfg config.Config, w io.Writer, tty bool) (*zap.Logger, error) {
	var lvl zapcore.Level
	if err := lvl.Set(cfg.LogLevel); err != nil {
		return nil, &config.FieldError{Field: "log_level", Msg: err.Error()}
	}
	format := cfg.LogFormat
	if format == "" {
		format = "json"
		if tty {
			format = "console"
		}
	}
	ec := zap.NewProductionEncoderConfig()
	ec.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	if format == "console" {
		ec.EncodeLevel = zapcore.CapitalColorLevelEncoder
		enc = zapcore.NewConsoleEncoder(ec)
	} else {
		enc = zapcore.NewJSONEncoder(ec)
	}
	return zap.New(zapcore.NewCore(enc, zapcore.AddSync(w), lvl)), nil
}

// Redis opens (once) the Redis client.
func (a *App) Redis(ctx context.Context) (*redis.Client, error) {
	a.once.Lock()
	defer a.once.Unlock()
	if a.rdb != nil {
		return a.rdb, nil
	}
	rdb, err := a.Cfg.NewRedis(a.Cfg.Worker.Concurrency + 10)
	if err != nil {
		return nil, Usage(err)
	}
	// Sentinels first, each with a short timeout: through them, a master
	// nobody names took the failover client over half a minute to give up
	// on, with the same "unreachable" for every cause.
	if why := a.Cfg.SentinelProblem(ctx); why != "" {
		_ = rdb.Close()
		return nil, fmt.Errorf("cannot reach Redis at %s: %s", a.Cfg.RedactRedis(), why)
	}
	if err := rdb.Ping(ctx).Err(); err != nil {
		_ = rdb.Close()
		return nil, fmt.Errorf("cannot reach Redis at %s: %w", a.Cfg.RedactRedis(), err)
	}
	a.rdb = rdb
	return rdb, nil
}

// DB opens (once) the PostgreSQL pool of the default database (main,
// DATABASE_URL).
func (a *App) DB(ctx context.Context) (*pgxpool.Pool, error) {
	return a.DBNamed(ctx, config.DefaultDatabase)
}

// DBNamed opens (once) the PostgreSQL pool of the named database. An
// unknown name is a usage error naming the configured ones.
func (a *App) DBNamed(ctx context.Context, name string) (*pgxpool.Pool, error) {
	return a.openDB(ctx, name, false)
}

// openDB opens database name's pool. lazy (the worker, for a database
// other than the default) returns a pool that connects when first used
// if the database does not answer now: the other databases' migrations
// must not wait for it.
func (a *App) openDB(ctx context.Context, name string, lazy bool) (*pgxpool.Pool, error) {
	a.once.Lock()
	defer a.once.Unlock()
	if p := a.pools[name]; p != nil {
		return p, nil
	}
	d, ok := a.Cfg.Database(name)
	if !ok {
		if name == config.DefaultDatabase && len(a.Cfg.Databases) == 0 {
			return nil, Usage(a.Cfg.RequireDatabase())
		}
		return nil, Usage(&config.UnknownDatabaseError{Name: name, Known: a.Cfg.DatabaseNames()})
	}
	size := int32(a.Cfg.Worker.Concurrency) + 4
	pool, err := config.NewPool(ctx, d.URL, size)
	if err == nil {
		err = pool.Ping(ctx)
	}
	if err != nil {
		if pool != nil {
			pool.Close()
		}
		where := "cannot reach PostgreSQL at " + config.RedactURL(d.URL)
		if name != config.DefaultDatabase || len(a.Cfg.DatabaseList()) > 1 {
			where = "database " + name + ": " + where
		}
		if !lazy || ctx.Err() != nil || !batched.IsConnLoss(err) {
			// A refused password or a missing database is a setting to
			// fix, not an outage to wait out.
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		pc, perr := config.PoolConfig(d.URL, size)
		if perr != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if pool, perr = pgxpool.NewWithConfig(ctx, pc); perr != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		a.Log.Warn(where+"; its batched background migrations wait for it", zap.String("database", name), zap.Error(err))
	}
	if a.pools == nil {
		a.pools = map[string]*pgxpool.Pool{}
	}
	a.pools[name] = pool
	return pool, nil
}

// OnClose runs f when the command finishes.
func (a *App) OnClose(f func()) { a.extra = append(a.extra, f) }

// Close releases connections.
func (a *App) Close() {
	for i := len(a.extra) - 1; i >= 0; i-- {
		a.extra[i]()
	}
	if a.rdb != nil {
		_ = a.rdb.Close()
	}
	for _, p := range a.pools {
		p.Close()
	}
}

// PrintJSON writes v as indented JSON to stdout.
func (a *App) PrintJSON(v any) error {
	enc := json.NewEncoder(a.Out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func isCobraUsage(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand", "accepts ", "requires at least", "requires at most", "invalid argument"} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}
