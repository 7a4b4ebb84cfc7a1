package web_test

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap/zaptest"

	"github.com/ferrymigrate/ferry/internal/batched"
	"github.com/ferrymigrate/ferry/internal/batched/batchedtest"
	"github.com/ferrymigrate/ferry/internal/ferryschema"
	"github.com/ferrymigrate/ferry/internal/testenv"
	"github.com/ferrymigrate/ferry/internal/web"
)

// GitLab's main and ci in one UI: a database selector (?database=), each
// migration labeled with its database, actions on the right one, and
// /metrics series with GitLab's db_config_name label.
func TestMultiDatabaseUI(t *testing.T) {
	t.Parallel()
	b := &bundle{ctx: testenv.Context(t), db: testenv.Postgres(t), rdb: testenv.Redis(t)}
	ci := testenv.Postgres(t)
	now := time.Now()
	log := zaptest.NewLogger(t)
	var dbs []web.Database
	seeds := map[string]batchedtest.Seeded{}
	for _, d := range []struct {
		name string
		pool *pgxpool.Pool
	}{{"main", b.db}, {"ci", ci}} {
		if err := ferryschema.Apply(b.ctx, d.pool); err != nil {
			t.Fatal(err)
		}
		seed, err := batchedtest.Seed(b.ctx, d.pool, now)
		if err != nil {
			t.Fatal(err)
		}
		seeds[d.name] = seed
		em := web.NewEngineMigrations(b.ctx, batched.NewEngine(d.pool, batched.Config{Logger: log}), log)
		t.Cleanup(func() { em.Wait(); em.Close() })
		dbs = append(dbs, web.Database{Name: d.name, DB: d.pool, Migrations: em})
	}
	// ci's ids differ from main's, so a page of the wrong database shows.
	if _, err := ci.Exec(b.ctx, `UPDATE batched_background_migrations SET table_name = 'ci_' || table_name`); err != nil {
		t.Fatal(err)
	}
	var err error
	b.srv, err = web.New(web.Config{Databases: dbs, Redis: b.rdb, Auth: web.Auth{Token: token, Username: user, Password: pass}, Logger: log, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	b.ts = httptest.NewServer(b.srv.Handler())
	t.Cleanup(b.ts.Close)

	code, body := b.get(t, "/background_migrations")
	if code != 200 {
		t.Fatalf("index: %d", code)
	}
	contains(t, body, `data-database="main">Database: main</a>`, `data-database="ci">Database: ci</a>`,
		fmt.Sprintf(`<td>main_%d</td><td class="db">main</td>`, seeds["main"].Active))
	if strings.Contains(body, "ci_") {
		t.Errorf("main's page shows ci's migrations")
	}
	code, body = b.get(t, "/background_migrations?database=ci")
	if code != 200 {
		t.Fatalf("index ci: %d", code)
	}
	active := seeds["ci"].Active
	contains(t, body, fmt.Sprintf(`<td>ci_%d</td><td class="db">ci</td>`, active),
		fmt.Sprintf(`href="/background_migrations/%d?database=ci"`, active), `href="/background_migrations?tab=failed&amp;database=ci"`,
		fmt.Sprintf(`action="/background_migrations/%d/pause?database=ci"`, active))
	if code, body := b.get(t, "/background_migrations?database=xy"); code != 404 || !strings.Contains(body, "main, ci") {
		t.Errorf("unknown database: %d", code)
	}

	code, body = b.get(t, fmt.Sprintf("/background_migrations/%d?database=ci", active))
	if code != 200 {
		t.Fatalf("show ci: %d", code)
	}
	contains(t, body, fmt.Sprintf("› ci_%d", active), `href="/background_migrations?database=ci"`,
		fmt.Sprintf(`href="/background_migrations/%d?confirm=finalize&amp;database=ci#confirm"`, active))
	// The id as the CLI and GitLab write it goes to that page.
	if code, _, hdr := b.do(t, req{path: fmt.Sprintf("/background_migrations/ci_%d", active), basic: true}); code != http.StatusFound ||
		hdr.Get("Location") != fmt.Sprintf("/background_migrations/%d?database=ci", active) {
		t.Fatalf("ci_%d: %d %q", active, code, hdr.Get("Location"))
	}
	// The root keeps the database asked for.
	if code, _, hdr := b.do(t, req{path: "/?database=ci", basic: true}); code != http.StatusFound || hdr.Get("Location") != "/background_migrations?database=ci" {
		t.Fatalf("/?database=ci: %d %q", code, hdr.Get("Location"))
	}
	if code, _ := b.get(t, fmt.Sprintf("/background_migrations/xy_%d", active)); code != 404 {
		t.Fatalf("xy_%d: %d, want 404", active, code)
	}
	// A missing job names the migration as the commands take it.
	if code, body := b.get(t, fmt.Sprintf("/background_migrations/%d/jobs/987654?database=ci", active)); code != 404 ||
		!strings.Contains(body, fmt.Sprintf("migration ci_%d has no job 987654", active)) {
		t.Errorf("missing job on ci: %d %s", code, grepLines(body, "no job"))
	}
	_, body = b.get(t, fmt.Sprintf("/background_migrations/%d?confirm=finalize&database=ci", active))
	contains(t, body, "ferry bbm finalize --db ci", fmt.Sprintf(`action="/background_migrations/%d/finalize?database=ci"`, active))

	// Pause on ci acts on ci only and comes back to ci's page.
	code, _, hdr := b.do(t, req{method: "POST", path: fmt.Sprintf("/background_migrations/%d/pause?database=ci", active), form: url.Values{}, bearer: true})
	if code != http.StatusSeeOther || !strings.Contains(hdr.Get("Location"), "database=ci") {
		t.Fatalf("pause ci: %d %q", code, hdr.Get("Location"))
	}
	status := func(p *pgxpool.Pool, id int64) int16 {
		var st int16
		if err := p.QueryRow(b.ctx, `SELECT status FROM batched_background_migrations WHERE id = $1`, id).Scan(&st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	if st := status(ci, active); st != web.StatusPaused {
		t.Errorf("ci's migration is %d after pause", st)
	}
	if st := status(b.db, seeds["main"].Active); st != web.StatusActive {
		t.Errorf("main's migration is %d after ci's pause", st)
	}
	// The id as the CLI writes it works for an action too (a POST is not
	// redirected), and disagreeing with ?database= is refused.
	if code, _, _ := b.do(t, req{method: "POST", path: fmt.Sprintf("/background_migrations/ci_%d/resume?database=main", active), form: url.Values{}, bearer: true}); code != http.StatusBadRequest {
		t.Errorf("ci_%d with ?database=main: %d, want 400", active, code)
	}
	if code, _, hdr := b.do(t, req{method: "POST", path: fmt.Sprintf("/background_migrations/ci_%d/resume", active), form: url.Values{}, bearer: true}); code != http.StatusSeeOther || !strings.Contains(hdr.Get("Location"), "database=ci") {
		t.Errorf("resume ci_%d: %d %q", active, code, hdr.Get("Location"))
	}
	if st := status(ci, active); st != web.StatusActive {
		t.Errorf("ci's migration is %d after resume ci_%d", st, active)
	}
	if code, _, _ := b.do(t, req{method: "POST", path: fmt.Sprintf("/background_migrations/xy_%d/pause", active), form: url.Values{}, bearer: true}); code != http.StatusNotFound {
		t.Errorf("pause xy_%d: %d, want 404", active, code)
	}
	var audited int
	if err := ci.QueryRow(b.ctx, `SELECT count(*) FROM ferry_web_actions WHERE action = 'pause' AND target = $1`, fmt.Sprintf("migration ci_%d", active)).Scan(&audited); err != nil || audited != 1 {
		t.Errorf("ci's audit log: %d %v", audited, err)
	}

	// The audit page of ci: its tabs, and links that stay in ci.
	if code, body := b.get(t, "/actions?database=ci"); code != 200 ||
		!strings.Contains(body, fmt.Sprintf(`<a href="/background_migrations/%d?database=ci">migration ci_%d</a>`, active, active)) ||
		!strings.Contains(body, `data-database="main">Database: main</a>`) {
		t.Errorf("audit page of ci: %d\n%s", code, grepLines(body, "background_migrations/"))
	}
	code, body = b.get(t, "/metrics")
	if code != 200 {
		t.Fatalf("metrics: %d", code)
	}
	for _, db := range []string{"main", "ci"} {
		if up := fmt.Sprintf(`ferry_scrape_source_up{db_config_name="%s",source="postgres"} 1`, db); !strings.Contains(body, up) {
			t.Errorf("no %s:\n%s", up, grepLines(body, "ferry_scrape_source_up"))
		}
		re := regexp.MustCompile(fmt.Sprintf(`(?m)^ferry_batched_migration_status\{db_config_name="%s",migration_id="%d",[^}]*\} `, db, seeds[db].Active))
		if !re.MatchString(body) {
			t.Errorf("no status series for %s:\n%s", db, grepLines(body, "ferry_batched_migration_status"))
		}
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// A database that is down: its pages say 503 and name it; the other's
// pages work.
func TestMultiDatabaseUIOneDown(t *testing.T) {
	t.Parallel()
	b := &bundle{ctx: testenv.Context(t), db: testenv.Postgres(t), rdb: testenv.Redis(t)}
	if err := ferryschema.Apply(b.ctx, b.db); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close() // nothing listens there now
	down, err := pgxpool.New(b.ctx, "postgres://ferry@"+closed+"/ci?sslmode=disable&connect_timeout=2")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(down.Close)
	log := zaptest.NewLogger(t)
	var dbs []web.Database
	for i, pool := range []*pgxpool.Pool{b.db, down} {
		em := web.NewEngineMigrations(b.ctx, batched.NewEngine(pool, batched.Config{Logger: log}), log)
		t.Cleanup(func() { em.Wait(); em.Close() })
		dbs = append(dbs, web.Database{Name: []string{"main", "ci"}[i], DB: pool, Migrations: em})
	}
	b.srv, err = web.New(web.Config{Databases: dbs, Redis: b.rdb, Auth: web.Auth{Token: token, Username: user, Password: pass}, Logger: log, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	b.ts = httptest.NewServer(b.srv.Handler())
	t.Cleanup(b.ts.Close)
	for _, path := range []string{"/background_migrations?database=ci", "/actions?database=ci"} {
		if code, body := b.get(t, path); code != http.StatusServiceUnavailable || !strings.Contains(body, "database ci:") {
			t.Errorf("%s: %d\n%s", path, code, grepLines(body, "database"))
		}
	}
	if code, _ := b.get(t, "/background_migrations?database=main"); code != 200 {
		t.Errorf("main's page with ci down: %d", code)
	}
}
