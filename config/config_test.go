package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestValidateNamesTheField(t *testing.T) {
	cases := []struct {
		name  string
		edit  func(*Config)
		field string
	}{
		{"redis url", func(c *Config) { c.RedisURL = "http://nope" }, "REDIS_URL"},
		{"empty redis url", func(c *Config) { c.RedisURL = "" }, "REDIS_URL"},
		{"database url", func(c *Config) { c.DatabaseURL = "postgres://a b@/x?sslmode=bogus" }, "DATABASE_URL"},
		{"log level", func(c *Config) { c.LogLevel = "loud" }, "log_level"},
		{"log format", func(c *Config) { c.LogFormat = "xml" }, "log_format"},
		{"concurrency zero", func(c *Config) { c.Worker.Concurrency = 0 }, "worker.concurrency"},
		{"concurrency huge", func(c *Config) { c.Worker.Concurrency = 5000 }, "worker.concurrency"},
		{"timeout", func(c *Config) { c.Worker.Timeout = -time.Second }, "worker.timeout"},
		{"timeout zero", func(c *Config) { c.Worker.Timeout = 0 }, "worker.timeout"},
		{"poll", func(c *Config) { c.Worker.PollInterval = 0 }, "worker.poll_interval"},
		{"retries", func(c *Config) { c.Worker.MaxRetries = -1 }, "worker.max_retries"},
		{"target", func(c *Config) { c.BBM.TargetBatchDuration = time.Millisecond }, "bbm.target_batch_duration"},
		{"duty zero", func(c *Config) { c.BBM.MaxDutyUnderLoad = 0 }, "bbm.max_duty_under_load"},
		{"duty above one", func(c *Config) { c.BBM.MaxDutyUnderLoad = 1.5 }, "bbm.max_duty_under_load"},
		{"latency impact negative", func(c *Config) { c.BBM.MaxLatencyImpact = -0.1 }, "bbm.max_latency_impact"},
		{"latency impact huge", func(c *Config) { c.BBM.MaxLatencyImpact = 11 }, "bbm.max_latency_impact"},
		{"lock timeout zero", func(c *Config) { c.BBM.LockTimeout = 0 }, "bbm.lock_timeout"},
		{"bm concurrency zero", func(c *Config) { c.BM.Concurrency = 0 }, "bm.concurrency"},
		{"bm max running below concurrency", func(c *Config) { c.BM.Concurrency, c.BM.MaxRunning = 8, 4 }, "bm.max_running"},
		{"bm lease wait zero", func(c *Config) { c.BM.LeaseWait = 0 }, "bm.lease_wait"},
		{"bm min interval tiny", func(c *Config) { c.BM.MinInterval = time.Millisecond }, "bm.min_interval"},
		{"allowed host url", func(c *Config) { c.Web.AllowedHosts = []string{"https://ferry.example"} }, "web.allowed_hosts[0]"},
		{"allowed host port", func(c *Config) { c.Web.AllowedHosts = []string{"ok.example", "ferry.example:7373"} }, "web.allowed_hosts[1]"},
		{"allowed host empty", func(c *Config) { c.Web.AllowedHosts = []string{""} }, "web.allowed_hosts[0]"},
		{"allowed host wildcard", func(c *Config) { c.Web.AllowedHosts = []string{"*.example"} }, "web.allowed_hosts[0]"},
		{"allowed host junk", func(c *Config) { c.Web.AllowedHosts = []string{"a..b"} }, "web.allowed_hosts[0]"},
		{"redis provider url", func(c *Config) { c.RedisProvider = "redis://x:6379" }, "REDIS_PROVIDER"},
		{"sentinel no port", func(c *Config) { c.Redis.Sentinels = []SentinelAddr{"s1:26379", "s2"} }, "redis.sentinels[1]"},
		{"sentinel bad port", func(c *Config) { c.Redis.Sentinels = []SentinelAddr{"s1:0"} }, "redis.sentinels[0]"},
		{"web listen port range", func(c *Config) { c.Web.Listen = "127.0.0.1:99999" }, "web.listen"},
		{"health listen port name", func(c *Config) { c.Worker.HealthListen = "localhost:abc" }, "worker.health_listen"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := Defaults()
			tc.edit(&c)
			err := c.Validate()
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tc.field {
				t.Fatalf("Validate() = %v, want a FieldError for %s", err, tc.field)
			}
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("error %q should match ErrInvalid and name %s", err, tc.field)
			}
		})
	}
	c := Defaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults must be valid: %v", err)
	}
	c.Web.AllowedHosts = []string{"ferry.internal", "Ferry-2.example.", "10.0.0.5", "::1", "[2001:db8::1]"}
	if err := c.Validate(); err != nil {
		t.Fatalf("valid web.allowed_hosts refused: %v", err)
	}
}

func TestLoadFileAndEnvPriority(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ferry.yml")
	yml := "redis_url: redis://file:6379/1\nworker:\n  concurrency: 7\n  queues: a,b\nweb:\n  serve_in_worker: true\n"
	if err := os.WriteFile(path, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvRedisURL, "redis://env:6379/2")
	t.Setenv(EnvDatabaseURL, "")
	c := Defaults()
	if err := c.LoadFile(path); err != nil {
		t.Fatal(err)
	}
	c.ApplyEnv()
	if c.RedisURL != "redis://env:6379/2" {
		t.Errorf("env must beat the file: RedisURL = %q", c.RedisURL)
	}
	if c.Worker.Concurrency != 7 || c.Worker.Queues != "a,b" || !c.Web.ServeInWorker {
		t.Errorf("file values not applied: %+v", c.Worker)
	}
	if c.Worker.Timeout != 25*time.Second {
		t.Errorf("unset file keys keep defaults, got timeout %s", c.Worker.Timeout)
	}
}

// An explicit 0 in the file is the operator's value: max_retries 0 is kept
// (no retries), timeout 0 is refused rather than replaced by the default.
func TestLoadFileExplicitZeros(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ferry.yml")
	if err := os.WriteFile(path, []byte("worker:\n  max_retries: 0\n  timeout: 0s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := Defaults()
	if err := c.LoadFile(path); err != nil {
		t.Fatal(err)
	}
	if c.Worker.MaxRetries != 0 {
		t.Errorf("max_retries: 0 from the file became %d", c.Worker.MaxRetries)
	}
	err := c.Validate()
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "worker.timeout" || !strings.Contains(fe.Msg, "must be > 0") {
		t.Fatalf("Validate() = %v, want worker.timeout: must be > 0", err)
	}
	c.Worker.Timeout = 10 * time.Second
	if err := c.Validate(); err != nil || c.Worker.MaxRetries != 0 {
		t.Fatalf("max_retries 0 must be valid and kept: err %v, max_retries %d", err, c.Worker.MaxRetries)
	}
}

func TestLoadFileRejectsUnknownKeys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ferry.yml")
	if err := os.WriteFile(path, []byte("worker:\n  concurency: 3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := Defaults()
	err := c.LoadFile(path)
	if err == nil || !strings.Contains(err.Error(), "concurency") {
		t.Fatalf("a misspelt key must be an error naming it, got %v", err)
	}
	if err := c.LoadFile(filepath.Join(t.TempDir(), "missing.yml")); !errors.Is(err, ErrInvalid) {
		t.Fatalf("a missing file must be a config error, got %v", err)
	}
}

// A value of the wrong type is reported with the field's name, not just
// yaml's line number.
func TestLoadFileNamesBadValues(t *testing.T) {
	for _, c := range []struct{ yaml, field string }{
		{"bbm:\n  target_batch_duration: banana\n", "bbm.target_batch_duration"},
		{"log_level: info\nworker:\n  tag: x\n  concurrency: lots\n", "worker.concurrency"},
		{"worker:\n  timeout: [1, 2]\n", "worker.timeout"},
		// Several keys on one line: the one at fault, not the first.
		{"worker: {concurrency: 5, timeout: banana, tag: x}\n", "worker.timeout"},
		{"bbm: {target_batch_duration: 2s, max_running 3}\n", "bbm.max_running 3"},
		{"bbm:\n  target_batch_duration 2s\n", "bbm"},
		// A value that is the start of another one on the line.
		{"worker: {tag: 1x2, concurrency: 1x}\n", "worker.concurrency"},
	} {
		path := filepath.Join(t.TempDir(), "ferry.yml")
		if err := os.WriteFile(path, []byte(c.yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg := Defaults()
		err := cfg.LoadFile(path)
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != c.field || !strings.Contains(err.Error(), "line ") {
			t.Errorf("%q: got %v, want an error naming %s", c.yaml, err, c.field)
		}
	}
}

func TestRedactURL(t *testing.T) {
	got := RedactURL("postgres://app:s3cret@db:5432/app")
	if strings.Contains(got, "s3cret") || !strings.Contains(got, "app:xxxxx@db") {
		t.Fatalf("RedactURL = %q", got)
	}
	if got := RedactURL("redis://127.0.0.1:6379/0"); got != "redis://127.0.0.1:6379/0" {
		t.Fatalf("RedactURL changed a URL without a password: %q", got)
	}
	// libpq accepts the password as a URL parameter and in a key=value DSN.
	for in, want := range map[string]string{
		"postgres://ferry@127.0.0.1:1/x?password=s3cret&sslmode=disable": "postgres://ferry@127.0.0.1:1/x?password=xxxxx&sslmode=disable",
		"host=127.0.0.1 port=1 user=ferry password=s3cret dbname=x":      "host=127.0.0.1 port=1 user=ferry password=xxxxx dbname=x",
		"password = 's3 cr\\'et' host=db":                                "password = xxxxx host=db",
		"host=db user=app":                                               "host=db user=app",
		"postgres://u@h/db?password=50%off":                              "postgres://u@h/db?password=xxxxx",
		"postgres://u:50%off@h/db":                                       "postgres://u:xxxxx@h/db",
		"host=db sslpassword=k3y password='abc def":                      "host=db sslpassword=xxxxx password=xxxxx",
		"postgres://u@h/db?sslmode=require&sslpassword=k3y":              "postgres://u@h/db?sslmode=require&sslpassword=xxxxx",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// Sentinels in YAML as strings or GitLab's host/port mappings, in the env
// as a list; the client then asks them for the master the URL names.
func TestRedisSentinelConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ferry.yml")
	yml := "redis:\n  sentinel_password: s3cret\n  sentinels:\n    - host: s1.example\n      port: 26380\n    - host: s2.example\n    - s3.example:26381\n"
	if err := os.WriteFile(path, []byte(yml), 0o644); err != nil {
		t.Fatal(err)
	}
	c := Defaults()
	if err := c.LoadFile(path); err != nil {
		t.Fatal(err)
	}
	want := []SentinelAddr{"s1.example:26380", "s2.example:26379", "s3.example:26381"}
	if len(c.Redis.Sentinels) != 3 || c.Redis.Sentinels[0] != want[0] || c.Redis.Sentinels[1] != want[1] || c.Redis.Sentinels[2] != want[2] {
		t.Fatalf("sentinels %v, want %v", c.Redis.Sentinels, want)
	}
	c.RedisURL = "redis://:pw@mymaster/3"
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	rdb, err := c.NewRedis(5)
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	if o := rdb.Options(); o.DB != 3 || o.Password != "pw" || o.Addr != "FailoverClient" {
		t.Fatalf("failover client options: db %d, addr %q", o.DB, o.Addr)
	}
	if d := c.RedactRedis(); strings.Contains(d, "pw") || !strings.Contains(d, "s1.example:26380") {
		t.Fatalf("RedactRedis() = %q", d)
	}

	t.Setenv(EnvRedisSentinels, "a:1, b:2")
	t.Setenv(EnvRedisProvider, "MY_REDIS")
	t.Setenv("MY_REDIS", "redis://provided:6379/4")
	t.Setenv(EnvRedisURL, "redis://ignored:6379/0")
	c = Defaults()
	c.ApplyEnv()
	if len(c.Redis.Sentinels) != 2 || c.Redis.Sentinels[1] != "b:2" || c.RedisURL != "redis://provided:6379/4" {
		t.Fatalf("from env: sentinels %v, url %q", c.Redis.Sentinels, c.RedisURL)
	}
	t.Setenv("MY_REDIS", "")
	c = Defaults()
	c.ApplyEnv()
	if c.RedisURL != "redis://ignored:6379/0" {
		t.Fatalf("REDIS_PROVIDER's variable unset: url %q, want REDIS_URL's", c.RedisURL)
	}
}

// A bad value's error names what the operator wrote: the YAML key, the
// environment variable (REDIS_PROVIDER's too) or the flag.
func TestFieldErrorsNameTheSource(t *testing.T) {
	for _, k := range []string{"REDIS_URL", "REDIS_PROVIDER", "DATABASE_URL", "FERRY_LOG_LEVEL", "REDIS_SENTINELS"} {
		t.Setenv(k, "")
	}
	load := func(t *testing.T, yml string, env ...string) error {
		t.Helper()
		for i := 0; i+1 < len(env); i += 2 {
			t.Setenv(env[i], env[i+1])
		}
		c := Defaults()
		if yml != "" {
			path := filepath.Join(t.TempDir(), "ferry.yml")
			if err := os.WriteFile(path, []byte(yml), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := c.LoadFile(path); err != nil {
				t.Fatal(err)
			}
		}
		c.ApplyEnv()
		return c.Validate()
	}
	for _, tc := range []struct {
		name, yml string
		env       []string
		field     string
	}{
		{"yaml database_url", "database_url: 'postgres://x@h:notaport/x'\n", nil, "database_url"},
		{"yaml redis_url", "redis_url: 'redis//x'\n", nil, "redis_url"},
		{"REDIS_PROVIDER's variable", "", []string{"REDIS_PROVIDER", "MYR", "MYR", "redis//x"}, "MYR"},
		{"env DATABASE_URL_CI", "", []string{"DATABASE_URL_CI", "postgres://x@h:bad/ci"}, "DATABASE_URL_CI"},
		{"yaml databases.ci.url", "databases:\n  ci:\n    url: 'postgres://x@h:bad/ci'\n", nil, "databases.ci.url"},
		{"env FERRY_LOG_LEVEL", "", []string{"FERRY_LOG_LEVEL", "loud"}, "FERRY_LOG_LEVEL"},
		{"yaml log_level", "log_level: loud\n", nil, "log_level"},
		{"env REDIS_SENTINELS", "", []string{"REDIS_SENTINELS", "foo:bar"}, "REDIS_SENTINELS"},
		{"yaml redis.sentinels", "redis:\n  sentinels: ['foo:bar']\n", nil, "redis.sentinels[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := load(t, tc.yml, tc.env...)
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tc.field {
				t.Fatalf("got %v, want an error naming %s", err, tc.field)
			}
		})
	}
}

// "key value" without the colon is named as such; a value where a section
// belongs (redis: URL) is not.
func TestLoadFileMissingColonHint(t *testing.T) {
	for yml, hint := range map[string]bool{"bbm:\n  target_batch_duration 2s\n": true, "redis: redis://x:1/0\n": false} {
		path := filepath.Join(t.TempDir(), "ferry.yml")
		if err := os.WriteFile(path, []byte(yml), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg := Defaults()
		err := cfg.LoadFile(path)
		if err == nil || strings.Contains(err.Error(), "a key needs a colon") != hint {
			t.Errorf("%q: got %v, want the colon hint: %v", yml, err, hint)
		}
	}
}

// A worker's stop bounds its Redis calls by context deadlines, which
// go-redis applies to socket reads and writes only with
// ContextTimeoutEnabled: both kinds of client have it.
func TestNewRedisHonoursContextDeadlines(t *testing.T) {
	c := Defaults()
	c.RedisURL = "redis://127.0.0.1:1/0"
	plain, err := c.NewRedis(5)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	c.RedisURL = "redis://mymaster/0"
	c.Redis.Sentinels = []SentinelAddr{"127.0.0.1:1"}
	failover, err := c.NewRedis(5)
	if err != nil {
		t.Fatal(err)
	}
	defer failover.Close()
	if !plain.Options().ContextTimeoutEnabled || !failover.Options().ContextTimeoutEnabled {
		t.Errorf("ContextTimeoutEnabled: plain client %v, failover client %v; want both",
			plain.Options().ContextTimeoutEnabled, failover.Options().ContextTimeoutEnabled)
	}
}
