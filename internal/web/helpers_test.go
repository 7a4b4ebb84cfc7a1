package web_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap/zaptest"

	"github.com/ferrymigrate/ferry/internal/batched"
	"github.com/ferrymigrate/ferry/internal/batched/batchedtest"
	"github.com/ferrymigrate/ferry/internal/ferryschema"
	"github.com/ferrymigrate/ferry/internal/testenv"
	"github.com/ferrymigrate/ferry/internal/web"
)

const (
	token = "s3cret-token"
	user  = "admin"
	pass  = "hunter2"
)

type bundle struct {
	ctx      context.Context
	db       *pgxpool.Pool
	rdb      *redis.Client
	srv      *web.Server
	ts       *httptest.Server
	seed     batchedtest.Seeded
	retryJID string
	deadJID  string
}

type opts struct {
	auth web.Auth
	// defaultMig leaves Config.Migrations unset: web.New builds the
	// engine-backed default on the pool.
	defaultMig bool
}

func setup(t *testing.T, o *opts) *bundle {
	t.Helper()
	if o == nil {
		o = &opts{auth: web.Auth{Token: token, Username: user, Password: pass}}
	}
	b := &bundle{ctx: testenv.Context(t), db: testenv.Postgres(t), rdb: testenv.Redis(t)}
	if err := ferryschema.Apply(b.ctx, b.db); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	var err error
	if b.seed, err = batchedtest.Seed(b.ctx, b.db, now); err != nil {
		t.Fatal(err)
	}
	if b.retryJID, b.deadJID, err = batchedtest.SeedRedis(b.ctx, b.rdb, now); err != nil {
		t.Fatal(err)
	}
	log := zaptest.NewLogger(t)
	cfg := web.Config{DB: b.db, Redis: b.rdb, Auth: o.auth, Logger: log, Version: "test"}
	if !o.defaultMig {
		e := batched.NewEngine(b.db, batched.Config{Logger: log})
		em := web.NewEngineMigrations(b.ctx, e, log)
		t.Cleanup(func() { em.Wait(); em.Close() })
		cfg.Migrations = em
	}
	b.srv, err = web.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.srv.Setup(b.ctx); err != nil {
		t.Fatal(err)
	}
	b.ts = httptest.NewServer(b.srv.Handler())
	t.Cleanup(b.ts.Close)
	return b
}

type req struct {
	method, path string
	form         url.Values
	bearer       bool
	basic        bool
	header       map[string]string
}

func (b *bundle) do(t *testing.T, r req) (int, string, http.Header) {
	t.Helper()
	var body io.Reader
	if r.form != nil {
		body = strings.NewReader(r.form.Encode())
	}
	if r.method == "" {
		r.method = http.MethodGet
	}
	hr, err := http.NewRequestWithContext(b.ctx, r.method, b.ts.URL+r.path, body)
	if err != nil {
		t.Fatal(err)
	}
	if r.form != nil {
		hr.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if r.bearer {
		hr.Header.Set("Authorization", "Bearer "+token)
	}
	if r.basic {
		hr.SetBasicAuth(user, pass)
	}
	for k, v := range r.header {
		hr.Header.Set(k, v)
	}
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(hr)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data), resp.Header
}

func (b *bundle) get(t *testing.T, path string) (int, string) {
	t.Helper()
	code, body, _ := b.do(t, req{path: path, basic: true})
	return code, body
}

// csrf scrapes the CSRF token from a page rendered for the basic-auth user.
func (b *bundle) csrf(t *testing.T, path string) string {
	t.Helper()
	_, body := b.get(t, path)
	const marker = `name="csrf" value="`
	i := strings.Index(body, marker)
	if i < 0 {
		t.Fatalf("no csrf token on %s", path)
	}
	rest := body[i+len(marker):]
	return rest[:strings.IndexByte(rest, '"')]
}

func (b *bundle) status(t *testing.T, id int64) int16 {
	t.Helper()
	var st int16
	if err := b.db.QueryRow(b.ctx, `SELECT status FROM batched_background_migrations WHERE id = $1`, id).Scan(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

func contains(t *testing.T, body string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(body, w) {
			t.Errorf("page does not contain %q", w)
		}
	}
}
