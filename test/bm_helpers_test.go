package test

import (
	"bytes"
	"context"
	"os/exec"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/ferrymigrate/ferry/cli"
	"github.com/ferrymigrate/ferry/internal/ferryschema"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

// bmBundle is the environment of a legacy-migration integration test: a
// fresh Redis database and a fresh PostgreSQL database with ferry's schema
// and a users table of 200 rows whose id_big column is empty.
type bmBundle struct {
	ctx      context.Context
	redisURL string
	dbURL    string
	rdb      *redis.Client
	db       *pgxpool.Pool
}

func bmSetup(t *testing.T) *bmBundle {
	t.Helper()
	b := &bmBundle{ctx: testenv.Context(t), redisURL: testenv.RedisURL(t), dbURL: testenv.DatabaseURL(t)}
	o, err := redis.ParseURL(b.redisURL)
	if err != nil {
		t.Fatal(err)
	}
	b.rdb = redis.NewClient(o)
	t.Cleanup(func() { _ = b.rdb.Close() })
	// Named as ferry's own sessions are: the test's polling is not an
	// application for the workers' pacing to give way to.
	pc, err := pgxpool.ParseConfig(b.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	pc.ConnConfig.RuntimeParams["application_name"] = "ferry-test"
	b.db, err = pgxpool.NewWithConfig(b.ctx, pc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.db.Close)
	if err := ferryschema.Apply(b.ctx, b.db); err != nil {
		t.Fatal(err)
	}
	b.exec(t, `CREATE TABLE users (id bigserial PRIMARY KEY, legacy_id integer, id_big bigint);
		INSERT INTO users (legacy_id) SELECT g * 10 FROM generate_series(1, 200) g;
		CREATE TABLE x (keep int); INSERT INTO x VALUES (1);`)
	return b
}

func (b *bmBundle) exec(t *testing.T, sql string, args ...any) {
	t.Helper()
	if _, err := b.db.Exec(b.ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func (b *bmBundle) int(t *testing.T, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := b.db.QueryRow(b.ctx, sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// copied counts users rows whose id_big holds legacy_id.
func (b *bmBundle) copied(t *testing.T) int {
	return b.int(t, `SELECT count(*) FROM users WHERE id_big = legacy_id`)
}

// ferry runs the CLI in-process and returns its exit code, stdout and stderr.
func (b *bmBundle) ferry(t *testing.T, opts cli.Options, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	args = append(args, "--redis-url", b.redisURL, "--database-url", b.dbURL, "--log-level", "warn")
	code := cli.Main(b.ctx, args, &out, &errb, opts)
	return code, out.String(), errb.String()
}

const bmRubyPrelude = `
require 'sidekiq'
require 'sidekiq/api'
require 'json'
Sidekiq.configure_client { |c| c.redis = { url: ENV.fetch('REDIS_URL') } }
def bm_push(args, at: nil)
  item = { 'class' => 'BackgroundMigrationWorker', 'queue' => 'background_migration', 'retry' => 3, 'args' => args }
  item['at'] = at if at
  Sidekiq::Client.push(item)
end
`

// bmRuby runs a Ruby script with Debian's ruby-sidekiq 6.4 against b's
// Redis and returns its stdout.
func (b *bmBundle) ruby(t *testing.T, script string) string {
	t.Helper()
	if _, err := exec.LookPath("ruby"); err != nil {
		t.Skip("ruby is not installed (apt-get install ruby-sidekiq)")
	}
	cmd := exec.CommandContext(b.ctx, "ruby", "-e", bmRubyPrelude+script)
	cmd.Env = append(cmd.Environ(), "REDIS_URL="+b.redisURL)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("ruby: %v\n%s", err, errb.String())
	}
	return strings.TrimSpace(out.String())
}
