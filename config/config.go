package config

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"gopkg.in/yaml.v3"
)

// Config is ferry's whole configuration.
type Config struct {
	// from records where a value that errors name came from (see SetFrom).
	from map[string]string

	RedisURL    string `yaml:"redis_url"`
	DatabaseURL string `yaml:"database_url"`
	// DatabaseDirectURL reaches PostgreSQL without a transaction pooler
	// (PgBouncer): `ferry db` uses it for what needs a real session
	// (the migrator's lock, pg_dump, pg_restore). Empty: DatabaseURL.
	DatabaseDirectURL string `yaml:"database_direct_url"`
	LogLevel          string `yaml:"log_level"`
	LogFormat         string `yaml:"log_format"` // "json", "console" or "" (auto)

	// Databases are named databases besides (or including) the default
	// one, "main", which DatabaseURL reaches (see DatabaseList).
	Databases map[string]Database `yaml:"databases"`

	Redis  Redis  `yaml:"redis"`
	Worker Worker `yaml:"worker"`
	Web    Web    `yaml:"web"`
	BBM    BBM    `yaml:"bbm"`
	BM     BM     `yaml:"bm"`

	// RedisProvider is $REDIS_PROVIDER, kept to validate it: the name of
	// the variable that holds the Redis URL (Sidekiq's convention).
	RedisProvider string `yaml:"-"`
}

// Redis configures the Redis connection beyond its URL, in the shapes
// Sidekiq and GitLab users write.
type Redis struct {
	// Sentinels are the Redis Sentinels to ask for the master ("host:port",
	// or GitLab's {host: ..., port: ...}); the URL's host is then the
	// master's name: redis://:password@mymaster/0.
	Sentinels        []SentinelAddr `yaml:"sentinels"`
	SentinelUsername string         `yaml:"sentinel_username"`
	SentinelPassword string         `yaml:"sentinel_password"`
	// WaitReplicas > 0 makes `ferry enqueue`'s pushes count only once that
	// many replicas confirm them (Redis WAIT),
	// so a Sentinel failover cannot lose them; see queue.WaitForReplicas.
	WaitReplicas int `yaml:"wait_replicas"`
	// WaitTimeout is how long one WAIT waits before the push is made again.
	WaitTimeout time.Duration `yaml:"wait_timeout"`
}

// SentinelAddr is one sentinel's "host:port".
type SentinelAddr string

// UnmarshalYAML reads "host:port", or a mapping with host and port
// (26379 when absent) as in GitLab's resque.yml.
func (a *SentinelAddr) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		*a = SentinelAddr(n.Value)
		return nil
	}
	var m struct {
		Host string `yaml:"host"`
		Port int    `yaml:"port"`
	}
	if err := n.Decode(&m); err != nil {
		return err
	}
	if m.Port == 0 {
		m.Port = 26379
	}
	*a = SentinelAddr(net.JoinHostPort(m.Host, strconv.Itoa(m.Port)))
	return nil
}

// Worker configures `ferry worker`.
type Worker struct {
	Concurrency int           `yaml:"concurrency"`
	Queues      string        `yaml:"queues"`
	Timeout     time.Duration `yaml:"timeout"`
	Tag         string        `yaml:"tag"`
	// PollInterval is Sidekiq's average_scheduled_poll_interval.
	PollInterval time.Duration `yaml:"poll_interval"`
	// MaxRetries is the retry limit of jobs with retry:true (Sidekiq's
	// max_retries); 0 sends them to the dead set on their first failure.
	MaxRetries int    `yaml:"max_retries"`
	Hostname   string `yaml:"hostname"`
	// Procs caps the OS threads running Go code (GOMAXPROCS); 0 keeps Go's
	// default (all cores). 1 leaves the other cores to a Redis or
	// PostgreSQL on the same host, which is faster there.
	Procs int `yaml:"procs"`
	// HealthListen serves /liveness and /readiness on this address (off
	// when empty).
	HealthListen string `yaml:"health_listen"`
	// SystemdNotify: started by systemd with NOTIFY_SOCKET (Type=notify).
	SystemdNotify bool `yaml:"-"`
}

// Web configures `ferry web`.
type Web struct {
	Listen string `yaml:"listen"`
	// ServeInWorker makes `ferry worker` serve the admin UI and /metrics
	// on Listen too (flag `ferry worker --web`).
	ServeInWorker bool   `yaml:"serve_in_worker"`
	Token         string `yaml:"token"`
	Username      string `yaml:"username"`
	Password      string `yaml:"password"`
	// AllowedHosts are host names or IPs (no port) that requests may name
	// in their Host header besides the loopback names and the listen
	// address's host; other hosts get 421, which defeats DNS rebinding.
	AllowedHosts []string `yaml:"allowed_hosts"`
}

// BBM configures batched background migrations.
type BBM struct {
	// TargetBatchDuration is what adaptive sizing aims each batch at.
	TargetBatchDuration time.Duration `yaml:"target_batch_duration"`
	// MaxDutyUnderLoad is the share of time a batch may spend in its
	// statements while other sessions use the database (1: never paced).
	// With MaxLatencyImpact above 0 it is where the closed loop starts,
	// what it keeps while it cannot measure, and the least it runs (up to
	// the closed loop's 7%: a larger value is only where it starts).
	MaxDutyUnderLoad float64 `yaml:"max_duty_under_load"`
	// MaxLatencyImpact is how much a migration may raise other sessions'
	// p99 latency (0.2: by a fifth); paced batches measure it and run as
	// much of the time as stays within it. 0: no closed loop, the fixed
	// duty cycle MaxDutyUnderLoad.
	MaxLatencyImpact float64 `yaml:"max_latency_impact"`
	// LockTimeout is how long a sub-batch waits for another session's
	// lock before it gives up and the migration goes on hold.
	LockTimeout time.Duration `yaml:"lock_timeout"`
}

// BM configures legacy (BackgroundMigrationWorker) migrations in `ferry
// worker`. The limits are cluster-wide; give every worker the same values.
type BM struct {
	// Concurrency is how many jobs of one migration class run at once.
	Concurrency int `yaml:"concurrency"`
	// MaxRunning is how many legacy jobs of all classes run at once.
	MaxRunning int `yaml:"max_running"`
	// LeaseWait is how long a job waits for its class's running slot
	// before it goes back to the end of its queue.
	LeaseWait time.Duration `yaml:"lease_wait"`
	// MinInterval > 0 restores GitLab's fixed cadence: one job per class
	// per interval (GitLab: 2m), lease never released, jobs given up after
	// 5 misses. Concurrency does not apply then.
	MinInterval time.Duration `yaml:"min_interval"`
}

// Defaults returns the built-in configuration.
func Defaults() Config {
	return Config{
		RedisURL: "redis://127.0.0.1:6379/0",
		LogLevel: "info",
		Worker: Worker{
			Concurrency:  10,
			Queues:       "background_migration",
			Timeout:      25 * time.Second,
			PollInterval: 5 * time.Second,
			MaxRetries:   25,
		},
		Web: Web{Listen: "127.0.0.1:7373"},
		BBM: BBM{TargetBatchDuration: 2 * time.Second, MaxDutyUnderLoad: 0.02, MaxLatencyImpact: 0.2, LockTimeout: 500 * time.Millisecond},
		BM:  BM{Concurrency: 1, MaxRunning: 4, LeaseWait: 5 * time.Second},
	}
}

// FieldError is a configuration error naming the offending field.
type FieldError struct {
	Field string // e.g. "worker.concurrency" or "REDIS_URL"
	Msg   string
}

func (e *FieldError) Error() string { return fmt.Sprintf("config: %s: %s", e.Field, e.Msg) }

// ErrInvalid matches every validation error.
var ErrInvalid = errors.New("invalid configuration")

func (e *FieldError) Is(target error) bool { return target == ErrInvalid }

// LoadFile merges a YAML file into c. Unknown keys are errors, so a typo
// does not silently fall back to a default.
func (c *Config) LoadFile(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return &FieldError{Field: "config file", Msg: err.Error()}
	}
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(true)
	err = dec.Decode(c)
	if err == nil || errors.Is(err, errEOF) {
		c.fromFile(data)
		return nil
	}
	// yaml reports a bad value by line ("line 2: cannot unmarshal !!str
	// `banana` into time.Duration"); name the field on that line instead.
	var te *yaml.TypeError
	var root yaml.Node
	if errors.As(err, &te) && len(te.Errors) > 0 && yaml.Unmarshal(data, &root) == nil {
		if line, msg, ok := strings.Cut(te.Errors[0], ": "); ok {
			var n int
			if _, serr := fmt.Sscanf(line, "line %d", &n); serr == nil {
				if field := keyAtLine(&root, n, "", culprit(msg)); field != "" {
					if strings.HasPrefix(msg, "cannot unmarshal !!str") && strings.Contains(msg, "into config.") && missingColon(data, n) {
						msg += `: a key needs a colon and a space before its value ("key: value")`
					}
					return &FieldError{Field: field, Msg: fmt.Sprintf("%s (%s, %s)", msg, path, line)}
				}
			}
		}
	}
	return &FieldError{Field: "config file " + path, Msg: err.Error()}
}

// missingColon reports whether line n (from 1) of data reads "key value":
// words, no colon, where yaml wanted a section.
func missingColon(data []byte, n int) bool {
	lines := strings.Split(string(data), "\n")
	if n < 1 || n > len(lines) {
		return false
	}
	text := strings.TrimSpace(lines[n-1])
	return !strings.Contains(text, ":") && strings.Contains(text, " ")
}

var (
	unknownKeyRE = regexp.MustCompile("^field (.+) not found in type ")
	badValueRE   = regexp.MustCompile("^cannot unmarshal !!\\w+ `(.*)` into ")
)

// culprit picks, from yaml's message about a line, the key or value it is
// about, so that with several keys on one line ({a: 1, b x}) the right
// one is named: the unknown key's name, or the start of the bad value
// (yaml cuts long ones with "..."). nil matches any key.
func culprit(msg string) func(key, val *yaml.Node) bool {
	if m := unknownKeyRE.FindStringSubmatch(msg); m != nil {
		return func(key, _ *yaml.Node) bool { return key.Value == m[1] }
	}
	if m := badValueRE.FindStringSubmatch(msg); m != nil {
		prefix, cut := strings.CutSuffix(m[1], "...")
		return func(_, val *yaml.Node) bool {
			return val.Kind != yaml.ScalarNode || val.Value == m[1] || (cut && strings.HasPrefix(val.Value, prefix))
		}
	}
	return nil
}

// keyAtLine returns the dotted path of the mapping key whose value starts
// on line (or of the key itself on that line) and that match accepts (nil:
// any), "" when there is none.
func keyAtLine(n *yaml.Node, line int, prefix string, match func(key, val *yaml.Node) bool) string {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			if k := keyAtLine(c, line, prefix, match); k != "" {
				return k
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			key, val := n.Content[i], n.Content[i+1]
			name := key.Value
			if prefix != "" {
				name = prefix + "." + key.Value
			}
			if k := keyAtLine(val, line, name, match); k != "" {
				return k
			}
			onLine := key.Line == line || (val.Kind == yaml.ScalarNode && val.Line == line)
			if onLine && (match == nil || match(key, val)) {
				return name
			}
		}
	}
	return ""
}

// Env names ferry reads.
const (
	EnvRedisURL = "REDIS_URL"
	// EnvRedisProvider names the variable that holds the Redis URL.
	EnvRedisProvider = "REDIS_PROVIDER"
	// EnvRedisSentinels: comma-separated host:port of Redis Sentinels.
	EnvRedisSentinels        = "REDIS_SENTINELS"
	EnvRedisSentinelPassword = "REDIS_SENTINEL_PASSWORD"
	EnvDatabaseURL           = "DATABASE_URL"
	// EnvDatabaseDirectURL bypasses PgBouncer for `ferry db`.
	EnvDatabaseDirectURL = "DATABASE_DIRECT_URL"
	EnvConfig            = "FERRY_CONFIG"
	EnvLogLevel          = "FERRY_LOG_LEVEL"
	EnvWebToken          = "FERRY_WEB_TOKEN"
)

// ConfigPathFromEnv returns $FERRY_CONFIG.
func ConfigPathFromEnv() string { return os.Getenv(EnvConfig) }

// ApplyEnv overlays environment variables.
func (c *Config) ApplyEnv() {
	// Sidekiq's lookup: the variable REDIS_PROVIDER names, else REDIS_URL.
	c.RedisProvider = os.Getenv(EnvRedisProvider)
	if v := os.Getenv(c.RedisProvider); c.RedisProvider != "" && v != "" {
		c.RedisURL = v
		c.SetFrom(KeyRedisURL, c.RedisProvider)
	} else if v := os.Getenv(EnvRedisURL); v != "" {
		c.RedisURL = v
		c.SetFrom(KeyRedisURL, EnvRedisURL)
	}
	if v := os.Getenv(EnvRedisSentinels); v != "" {
		c.SetFrom(keySentinels, EnvRedisSentinels)
		c.Redis.Sentinels = nil
		for _, a := range strings.Split(v, ",") {
			c.Redis.Sentinels = append(c.Redis.Sentinels, SentinelAddr(strings.TrimSpace(a)))
		}
	}
	if v := os.Getenv(EnvRedisSentinelPassword); v != "" {
		c.Redis.SentinelPassword = v
	}
	if v := os.Getenv(EnvDatabaseURL); v != "" {
		c.DatabaseURL = v
		c.SetFrom(KeyDatabaseURL, EnvDatabaseURL)
	}
	c.applyDatabaseEnv()
	if v := os.Getenv(EnvDatabaseDirectURL); v != "" {
		c.DatabaseDirectURL = v
		c.SetFrom(KeyDirectURL, EnvDatabaseDirectURL)
	}
	if v := os.Getenv(EnvLogLevel); v != "" {
		c.LogLevel = v
		c.SetFrom(KeyLogLevel, EnvLogLevel)
	}
	if v := os.Getenv(EnvWebToken); v != "" {
		c.Web.Token = v
	}
	c.Worker.SystemdNotify = os.Getenv("NOTIFY_SOCKET") != ""
}

// Hostname is the host part of process identities.
func Hostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "localhost"
	}
	return h
}

// Validate checks the whole configuration once.
func (c *Config) Validate() error {
	if strings.Contains(c.RedisProvider, ":") {
		return &FieldError{Field: EnvRedisProvider, Msg: "must be the name of the variable that holds the Redis URL, not a URL " +
			"(e.g. REDISTOGO_URL=redis://host:6379/4 and REDIS_PROVIDER=REDISTOGO_URL)"}
	}
	if _, err := c.RedisOptions(); err != nil {
		return err
	}
	if err := validateSentinels(c.Redis.Sentinels, c.from[keySentinels] == EnvRedisSentinels); err != nil {
		return err
	}
	if n := c.Redis.WaitReplicas; n < 0 || n > 16 {
		return &FieldError{Field: "redis.wait_replicas", Msg: fmt.Sprintf("must be between 0 (do not wait) and 16, got %d", n)}
	}
	// Below the client's read timeout (3 s), which a WAIT must not reach.
	if d := c.Redis.WaitTimeout; d != 0 && (d < 10*time.Millisecond || d > 2*time.Second) {
		return &FieldError{Field: "redis.wait_timeout", Msg: fmt.Sprintf("must be between 10ms and 2s (each try; pushes try again until a replica confirms), got %s", d)}
	}
	if c.DatabaseURL != "" {
		if _, err := pgxpool.ParseConfig(c.DatabaseURL); err != nil {
			return &FieldError{Field: c.FieldName(KeyDatabaseURL, EnvDatabaseURL), Msg: "not a valid libpq URL or DSN: " + redactErr(err)}
		}
	}
	if c.DatabaseDirectURL != "" {
		if _, err := pgxpool.ParseConfig(c.DatabaseDirectURL); err != nil {
			return &FieldError{Field: c.FieldName(KeyDirectURL, EnvDatabaseDirectURL), Msg: "not a valid libpq URL or DSN: " + redactErr(err)}
		}
	}
	if err := c.validateDatabases(); err != nil {
		return err
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return &FieldError{Field: c.FieldName(KeyLogLevel, KeyLogLevel), Msg: fmt.Sprintf("must be debug, info, warn or error, got %q", c.LogLevel)}
	}
	switch c.LogFormat {
	case "", "json", "console":
	default:
		return &FieldError{Field: "log_format", Msg: fmt.Sprintf("must be json or console, got %q", c.LogFormat)}
	}
	w := c.Worker
	if w.Concurrency < 1 || w.Concurrency > 1000 {
		return &FieldError{Field: "worker.concurrency", Msg: fmt.Sprintf("must be between 1 and 1000, got %d", w.Concurrency)}
	}
	if w.Timeout <= 0 {
		// 0 is refused rather than read as "unset": a zero grace would
		// cancel every running job the moment the worker is asked to stop.
		return &FieldError{Field: "worker.timeout", Msg: fmt.Sprintf("must be > 0 (the shutdown grace for running jobs, e.g. 25s), got %s", w.Timeout)}
	}
	if w.PollInterval <= 0 {
		return &FieldError{Field: "worker.poll_interval", Msg: fmt.Sprintf("must be positive, got %s", w.PollInterval)}
	}
	if w.Procs < 0 || w.Procs > 1024 {
		return &FieldError{Field: "worker.procs", Msg: fmt.Sprintf("must be between 0 (Go's default) and 1024, got %d", w.Procs)}
	}
	if w.MaxRetries < 0 {
		return &FieldError{Field: "worker.max_retries", Msg: fmt.Sprintf("must be >= 0, got %d", w.MaxRetries)}
	}
	if a := w.HealthListen; a != "" {
		if _, port, err := net.SplitHostPort(a); err != nil || !validPort(port) {
			return &FieldError{Field: "worker.health_listen", Msg: fmt.Sprintf("must be host:port (e.g. 0.0.0.0:8092), got %q", a)}
		}
	}
	if a := c.Web.Listen; a != "" {
		if _, port, err := net.SplitHostPort(a); err != nil || !validPort(port) {
			return &FieldError{Field: "web.listen", Msg: fmt.Sprintf("must be host:port (e.g. 127.0.0.1:7373), got %q", a)}
		}
	}
	if err := validateHosts(c.Web.AllowedHosts); err != nil {
		return err
	}
	if c.BBM.TargetBatchDuration < 100*time.Millisecond || c.BBM.TargetBatchDuration > 10*time.Minute {
		return &FieldError{Field: "bbm.target_batch_duration", Msg: fmt.Sprintf("must be between 100ms and 10m, got %s", c.BBM.TargetBatchDuration)}
	}
	if !(c.BBM.MaxDutyUnderLoad > 0 && c.BBM.MaxDutyUnderLoad <= 1) {
		return &FieldError{Field: "bbm.max_duty_under_load", Msg: fmt.Sprintf("must be above 0 and at most 1 (1: never paced), got %g", c.BBM.MaxDutyUnderLoad)}
	}
	if !(c.BBM.MaxLatencyImpact >= 0 && c.BBM.MaxLatencyImpact <= 10) {
		return &FieldError{Field: "bbm.max_latency_impact", Msg: fmt.Sprintf("must be between 0 and 10 (0.2: others' p99 may rise by a fifth; 0: fixed duty cycle bbm.max_duty_under_load), got %g", c.BBM.MaxLatencyImpact)}
	}
	if c.BBM.LockTimeout < time.Millisecond || c.BBM.LockTimeout > time.Minute {
		return &FieldError{Field: "bbm.lock_timeout", Msg: fmt.Sprintf("must be between 1ms and 1m, got %s", c.BBM.LockTimeout)}
	}
	return c.BM.validate()
}

func (b BM) validate() error {
	if b.Concurrency < 1 || b.Concurrency > 1000 {
		return &FieldError{Field: "bm.concurrency", Msg: fmt.Sprintf("must be between 1 and 1000, got %d", b.Concurrency)}
	}
	if b.MaxRunning < 1 || b.MaxRunning > 10000 {
		return &FieldError{Field: "bm.max_running", Msg: fmt.Sprintf("must be between 1 and 10000, got %d", b.MaxRunning)}
	}
	if b.MaxRunning < b.Concurrency {
		return &FieldError{Field: "bm.max_running", Msg: fmt.Sprintf("must be at least bm.concurrency (%d), got %d", b.Concurrency, b.MaxRunning)}
	}
	if b.LeaseWait < 10*time.Millisecond || b.LeaseWait > time.Minute {
		return &FieldError{Field: "bm.lease_wait", Msg: fmt.Sprintf("must be between 10ms and 1m, got %s", b.LeaseWait)}
	}
	if b.MinInterval != 0 && (b.MinInterval < time.Second || b.MinInterval > 24*time.Hour) {
		return &FieldError{Field: "bm.min_interval", Msg: fmt.Sprintf("must be 0 (run at the database's pace) or between 1s and 24h (GitLab: 2m), got %s", b.MinInterval)}
	}
	return nil
}

// validateHosts checks web.allowed_hosts: bare host names or IPs, which
// are compared with the Host header of each request without its port.
func validateHosts(hosts []string) error {
	for i, h := range hosts {
		bad := func(why string) error {
			return &FieldError{Field: fmt.Sprintf("web.allowed_hosts[%d]", i), Msg: fmt.Sprintf("%s, got %q", why, h)}
		}
		host := strings.TrimSuffix(strings.Trim(h, "[]"), ".")
		switch {
		case host == "":
			return bad("must be a host name or IP")
		case strings.ContainsAny(h, "/@ \t*") || strings.Contains(h, "://"):
			return bad("must be a bare host name or IP (no scheme, path, user or wildcard)")
		case net.ParseIP(host) != nil:
		case strings.Contains(host, ":"):
			return bad("must not have a port (any port of the host is allowed)")
		case !validHostname(host):
			return bad("is not a valid host name")
		}
	}
	return nil
}

// validHostname accepts DNS names: labels of letters, digits, '-' and '_'.
func validHostname(h string) bool {
	if len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, r := range label {
			if !(r == '-' || r == '_' || (r >= '0' && r <= '9') || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z')) {
				return false
			}
		}
	}
	return true
}

// validPort is a port number to listen on: 0 (any) to 65535.
func validPort(p string) bool {
	n, err := strconv.Atoi(p)
	return err == nil && n >= 0 && n <= 65535
}

func validateSentinels(addrs []SentinelAddr, fromEnv bool) error {
	for i, a := range addrs {
		host, port, err := net.SplitHostPort(string(a))
		if n, perr := strconv.Atoi(port); err != nil || host == "" || perr != nil || n < 1 || n > 65535 {
			if fromEnv {
				return &FieldError{Field: EnvRedisSentinels, Msg: fmt.Sprintf("entry %d must be host:port, got %q", i+1, a)}
			}
			return &FieldError{Field: fmt.Sprintf("%s[%d]", keySentinels, i), Msg: fmt.Sprintf("must be host:port, got %q", a)}
		}
	}
	return nil
}

// NewRedis returns the Redis client the configuration describes: through
// the sentinels to the master they name when redis.sentinels is set
// (go-redis's failover client, which follows failovers), else to the
// URL's server. rediss:// URLs use TLS either way.
func (c *Config) NewRedis(poolSize int) (*redis.Client, error) {
	o, err := c.RedisOptions()
	if err != nil {
		return nil, err
	}
	o.PoolSize = max(o.PoolSize, poolSize)
	if len(c.Redis.Sentinels) == 0 {
		return redis.NewClient(o), nil
	}
	master, _, err := net.SplitHostPort(o.Addr)
	if err != nil || master == "" {
		return nil, &FieldError{Field: c.FieldName(KeyRedisURL, EnvRedisURL), Msg: "with redis.sentinels, the URL's host is the master's name (redis://:password@mymaster/0)"}
	}
	return redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName: master, SentinelAddrs: c.sentinelAddrs(),
		SentinelUsername: c.Redis.SentinelUsername, SentinelPassword: c.Redis.SentinelPassword,
		Username: o.Username, Password: o.Password, DB: o.DB, TLSConfig: o.TLSConfig, PoolSize: o.PoolSize,
		DialTimeout: o.DialTimeout, ReadTimeout: o.ReadTimeout, WriteTimeout: o.WriteTimeout,
		ContextTimeoutEnabled: o.ContextTimeoutEnabled,
	}), nil
}

// SentinelProblem asks each sentinel, with a short timeout, for the
// master the URL names, and says what is wrong when none names it: none
// answers (go-redis's failover client took over half a minute to fail
// then), they refuse the sentinel password, or they know no master by that
// name (go-redis says "unreachable" for all three). "" without sentinels
// or when one names the master.
func (c *Config) SentinelProblem(ctx context.Context) string {
	if len(c.Redis.Sentinels) == 0 {
		return ""
	}
	o, err := c.RedisOptions()
	if err != nil {
		return ""
	}
	master, _, _ := net.SplitHostPort(o.Addr)
	var answered, refused []string
	var lastErr error
	for _, a := range c.Redis.Sentinels {
		sc := redis.NewSentinelClient(&redis.Options{Addr: string(a), Username: c.Redis.SentinelUsername, Password: c.Redis.SentinelPassword,
			TLSConfig: o.TLSConfig, DialTimeout: time.Second, ReadTimeout: time.Second, WriteTimeout: time.Second, MaxRetries: -1})
		_, err := sc.GetMasterAddrByName(ctx, master).Result()
		_ = sc.Close()
		switch {
		case err == nil:
			return ""
		case errors.Is(err, redis.Nil):
			answered = append(answered, string(a))
		case isAuthError(err):
			refused, lastErr = append(refused, string(a)), err
		default:
			lastErr = err
		}
	}
	sentinels := c.FieldName(keySentinels, keySentinels)
	switch {
	case len(answered) > 0:
		return fmt.Sprintf("the sentinels at %s answer, but know no master named %q: with redis.sentinels, the host of REDIS_URL is the master's name as given to `sentinel monitor` (redis://:password@mymaster/0)",
			strings.Join(answered, ", "), master)
	case len(refused) > 0:
		return fmt.Sprintf("the sentinels at %s refuse the sentinel password (%v): set the sentinels' own password (their requirepass) "+
			"in redis.sentinel_password or %s; the password in the URL is the master's", strings.Join(refused, ", "), lastErr, EnvRedisSentinelPassword)
	}
	return fmt.Sprintf("none of the sentinels in %s answered (%s): %v", sentinels, strings.Join(c.sentinelAddrs(), ", "), lastErr)
}

func (c *Config) sentinelAddrs() []string {
	out := make([]string, len(c.Redis.Sentinels))
	for i, a := range c.Redis.Sentinels {
		out[i] = string(a)
	}
	return out
}

// isAuthError: the server refused the credentials (Redis 6+ WRONGPASS,
// NOAUTH when one is required and none was sent, and older servers'
// "invalid password").
func isAuthError(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "WRONGPASS") || strings.Contains(msg, "NOAUTH") || strings.Contains(msg, "invalid password") ||
		strings.Contains(msg, "without any password configured")
}

// RedactRedis describes where the client connects, without passwords.
func (c *Config) RedactRedis() string {
	u := RedactURL(c.RedisURL)
	if len(c.Redis.Sentinels) > 0 {
		u += fmt.Sprintf(" (master named by sentinels %v)", c.Redis.Sentinels)
	}
	return u
}

// RedisOptions parses RedisURL. Context deadlines bound socket reads and
// writes (ContextTimeoutEnabled): go-redis ignores them otherwise, and a
// worker's stop bounds its Redis calls by its --timeout.
func (c *Config) RedisOptions() (*redis.Options, error) {
	field := c.FieldName(KeyRedisURL, EnvRedisURL)
	if c.RedisURL == "" {
		return nil, &FieldError{Field: field, Msg: "is empty"}
	}
	o, err := redis.ParseURL(c.RedisURL)
	if err != nil {
		return nil, &FieldError{Field: field, Msg: fmt.Sprintf("not a valid redis:// URL (%v)", err)}
	}
	o.ContextTimeoutEnabled = true
	return o, nil
}

// PoolConfig is the pool configuration for url (DatabaseURL or
// DatabaseDirectURL) with ferry's defaults:
//   - connections named "ferry" (operators see them in pg_stat_activity,
//     and migrations do not pace for ferry's own idle connections), unless
//     the URL names them;
//   - no server-side prepared statements (pgx's exec mode), unless the URL
//     sets default_query_exec_mode: a transaction pooler (PgBouncer)
//     hands each transaction to any server connection, where a statement
//     prepared on another one does not exist.
func PoolConfig(url string, maxConns int32) (*pgxpool.Config, error) {
	pc, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	pc.MaxConns = max(pc.MaxConns, maxConns)
	if pc.ConnConfig.RuntimeParams["application_name"] == "" {
		pc.ConnConfig.RuntimeParams["application_name"] = "ferry"
	}
	if !strings.Contains(url, "default_query_exec_mode") {
		pc.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeExec
	}
	return pc, nil
}

// NewPool opens a pool with PoolConfig's defaults. When the URL leaves the
// exec mode to ferry, it first asks whether connections are real sessions:
// behind a transaction pooler the backend pid the server announced at
// connect (the pooler's own) is not the one that runs statements. Real
// sessions then prepare each statement once (pgx's statement cache), which
// spares PostgreSQL planning every sub-batch again; pooled ones stay
// unprepared.
func NewPool(ctx context.Context, url string, maxConns int32) (*pgxpool.Pool, error) {
	pc, err := PoolConfig(url, maxConns)
	if err != nil {
		return nil, err
	}
	if !strings.Contains(url, "default_query_exec_mode") {
		pooled, err := behindPooler(ctx, pc.ConnConfig)
		if err != nil {
			return nil, err
		}
		if !pooled {
			pc.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeCacheStatement
		}
	}
	return pgxpool.NewWithConfig(ctx, pc)
}

func behindPooler(ctx context.Context, cc *pgx.ConnConfig) (bool, error) {
	c, err := pgx.ConnectConfig(ctx, cc.Copy())
	if err != nil {
		return false, err
	}
	defer c.Close(context.WithoutCancel(ctx))
	var pid uint32
	if err := c.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		return false, err
	}
	return pid != c.PgConn().PID(), nil
}

// RequireDatabase reports a clear error when no database is configured.
func (c *Config) RequireDatabase() error {
	if c.DatabaseURL == "" {
		return &FieldError{Field: "DATABASE_URL", Msg: "is not set; pass --database-url or set DATABASE_URL (e.g. postgres://user@127.0.0.1:5432/app)"}
	}
	return nil
}

// RedactURL hides a password in a URL or a libpq key=value DSN for logs
// and errors: in the user part, in a ?password= or ?sslpassword=
// parameter, or as such a keyword. It works on the text, so a URL that
// does not parse (a bad escape in the password) is hidden too.
func RedactURL(s string) string {
	if u, err := url.Parse(s); err == nil && u.Scheme != "" {
		if u.User != nil {
			if _, has := u.User.Password(); has {
				u.User = url.UserPassword(u.User.Username(), "xxxxx")
			}
		}
		u.RawQuery = queryPassword.ReplaceAllString(u.RawQuery, "${1}xxxxx")
		return u.String()
	}
	if strings.Contains(s, "://") {
		s = urlPassword.ReplaceAllString(s, "${1}:xxxxx@")
		return queryPassword.ReplaceAllString(s, "${1}xxxxx")
	}
	return dsnPassword.ReplaceAllString(s, "${1}xxxxx")
}

// dsnPassword matches a (ssl)password keyword of a key=value DSN with its
// value: bare, quoted with backslash escapes, or an unterminated quote
// (all the rest).
var dsnPassword = regexp.MustCompile(`((?:^|\s)(?:ssl)?password\s*=\s*)(?:'(?:[^'\\]|\\.)*'|'.*|\S*)`)

// queryPassword matches a (ssl)password parameter of a URL's query.
var queryPassword = regexp.MustCompile(`((?:^|[?&])(?:ssl)?password=)[^&]*`)

// urlPassword matches the user:password@ part of a URL that does not
// parse.
var urlPassword = regexp.MustCompile(`(://[^:/@]*):[^@]*@`)

func redactErr(err error) string {
	// pgx errors can echo the DSN, including a password.
	msg := err.Error()
	if i := strings.Index(msg, "password="); i >= 0 {
		return msg[:i] + "password=xxxxx"
	}
	return msg
}

// TestURLs returns REDIS_URL and DATABASE_URL for test helpers; empty when
// unset (tests then skip, naming the variable).
func TestURLs() (redisURL, databaseURL string) {
	return os.Getenv(EnvRedisURL), os.Getenv(EnvDatabaseURL)
}

// Keys of the settings whose errors name where they were set (SetFrom,
// FieldName): their YAML names, as databases.NAME.url and the like are.
const (
	KeyRedisURL    = "redis_url"
	KeyDatabaseURL = "database_url"
	KeyDirectURL   = "database_direct_url"
	KeyLogLevel    = "log_level"
	keySentinels   = "redis.sentinels"
)

// UseDirectURL makes DatabaseDirectURL the URL (`ferry db`'s real
// session); an error about it then names where the direct URL was set.
func (c *Config) UseDirectURL() {
	c.DatabaseURL = c.DatabaseDirectURL
	c.SetFrom(KeyDatabaseURL, c.FieldName(KeyDirectURL, EnvDatabaseDirectURL))
}

// SetFrom records that the setting key (its YAML name) was set from
// source: an environment variable, a flag (--database-url) or the YAML
// key itself. A bad value's error then names what the operator wrote.
func (c *Config) SetFrom(key, source string) {
	if c.from == nil {
		c.from = map[string]string{}
	}
	c.from[key] = source
}

// FieldName is where the setting key (its YAML name: database_url,
// redis_url, ...) was set, def when nothing recorded it.
func (c *Config) FieldName(key, def string) string {
	if s, ok := c.from[key]; ok {
		return s
	}
	return def
}

// fromFile records the settings a config file sets, by their YAML names.
func (c *Config) fromFile(data []byte) {
	var doc map[string]any
	if yaml.Unmarshal(data, &doc) != nil {
		return
	}
	for _, k := range []string{KeyRedisURL, KeyDatabaseURL, KeyDirectURL, KeyLogLevel} {
		if _, ok := doc[k]; ok {
			c.SetFrom(k, k)
		}
	}
	if r, ok := doc["redis"].(map[string]any); ok {
		if _, ok := r["sentinels"]; ok {
			c.SetFrom(keySentinels, keySentinels)
		}
	}
	if dbs, ok := doc["databases"].(map[string]any); ok {
		for name, v := range dbs {
			d, _ := v.(map[string]any)
			for _, f := range []string{"url", "direct_url", "migrations"} {
				if _, ok := d[f]; ok {
					k := "databases." + name + "." + f
					c.SetFrom(k, k)
				}
			}
		}
	}
}
