package web_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/ferrymigrate/ferry/internal/legacy"
	"github.com/ferrymigrate/ferry/internal/web"
	"github.com/ferrymigrate/ferry/process"
)

func TestWebPages(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	s := b.seed
	for _, tc := range []struct {
		path string
		want []string
	}{
		{"/background_migrations", []string{"Queued <span class=\"count\">3</span>", "Finalizing <span class=\"count\">1</span>",
			"Failed <span class=\"count\">1</span>", "Finished <span class=\"count\">1</span>",
			"CopyColumnUsingBackgroundMigrationJob: events.id", "on hold", "autovacuum running on users"}},
		{"/background_migrations?tab=failed", []string{"BackfillProjectNamespaceId: projects.id", "failed batch"}},
		{"/background_migrations?tab=finished", []string{"notes.id", "100.00%"}},
		{"/background_migrations?tab=finalizing", []string{"ci_builds.id"}},
		{fmt.Sprintf("/background_migrations/%d", s.Active), []string{`id="chart"`, "Batch size (rows)", "Throughput (rows/s)", "Recent jobs", "Pause"}},
		{fmt.Sprintf("/background_migrations/%d", s.Failed), []string{"PG::NotNullViolation", "ActiveRecord::QueryCanceled", "Retry failed batches"}},
		{fmt.Sprintf("/background_migrations/%d?confirm=mark_finished", s.Failed), []string{"does NOT migrate the remaining rows", "Yes, mark finished"}},
		{"/legacy", []string{"CopyColumn", "BackfillMergeRequestDiffs"}},
		{"/busy", []string{"worker-1:4100", "Ferry::BatchedBackgroundMigrationExecutionWorker"}},
		{"/queues", []string{"background_migration", "default"}},
		{"/sets/retries", []string{b.retryJID, "statement timeout"}},
		{"/sets/dead", []string{b.deadJID, "uninitialized constant"}},
		{"/sets/scheduled", []string{"BackgroundMigrationWorker"}},
		{"/actions", []string{"No actions yet"}},
	} {
		t.Run(tc.path, func(t *testing.T) {
			code, body := b.get(t, tc.path)
			if code != http.StatusOK {
				t.Fatalf("GET %s = %d\n%s", tc.path, code, body)
			}
			contains(t, body, tc.want...)
		})
	}
	// The failed job page has the transition log.
	var jid int64
	if err := b.db.QueryRow(b.ctx, `SELECT id FROM batched_background_migration_jobs WHERE batched_background_migration_id = $1 AND status = 2 ORDER BY id LIMIT 1`, s.Failed).Scan(&jid); err != nil {
		t.Fatal(err)
	}
	code, body := b.get(t, fmt.Sprintf("/background_migrations/%d/jobs/%d", s.Failed, jid))
	if code != http.StatusOK {
		t.Fatalf("job page = %d", code)
	}
	contains(t, body, "Transition log", "ActiveRecord::NotNullViolation", "running", "failed")
}

func TestWebBadParameters(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	csrf := b.csrf(t, "/background_migrations")
	id := b.seed.Active
	for _, tc := range []struct {
		method, path string
		form         url.Values
		want         int
	}{
		{"GET", "/background_migrations?tab=nope", nil, 400},
		{"GET", "/background_migrations?page=x", nil, 400},
		{"GET", "/background_migrations?page=0", nil, 400},
		{"GET", "/background_migrations/abc", nil, 404},
		{"GET", "/background_migrations/0", nil, 404},
		{"GET", "/background_migrations/-5", nil, 404},
		{"GET", "/background_migrations/99999999999999999999", nil, 404},
		{"GET", "/background_migrations/987654", nil, 404},
		{"GET", fmt.Sprintf("/background_migrations/%d?confirm=explode", id), nil, 400},
		{"GET", fmt.Sprintf("/background_migrations/%d/jobs/x", id), nil, 404},
		{"GET", fmt.Sprintf("/background_migrations/%d/jobs/987654", id), nil, 404},
		{"GET", "/background_migrations/987654/jobs/1", nil, 404},
		{"GET", "/sets/nope", nil, 404},
		{"GET", "/sets/retries?page=-1", nil, 400},
		{"GET", "/no/such/page", nil, 404},
		{"POST", "/background_migrations/abc/pause", url.Values{"csrf": {csrf}}, 404},
		{"POST", "/background_migrations/987654/pause", url.Values{"csrf": {csrf}}, 404},
		{"POST", fmt.Sprintf("/background_migrations/%d/explode", id), url.Values{"csrf": {csrf}}, 404},
		{"POST", fmt.Sprintf("/background_migrations/%d/mark_finished", id), url.Values{"csrf": {csrf}}, 400},
		{"POST", fmt.Sprintf("/background_migrations/%d/resume", id), url.Values{"csrf": {csrf}}, 409},
		{"POST", "/sets/retries/retry", url.Values{"csrf": {csrf}, "key": {"garbage"}}, 400},
		{"POST", "/sets/retries/retry", url.Values{"csrf": {csrf}, "key": {"NaN-x"}}, 400},
		{"POST", "/sets/dead/delete", url.Values{"csrf": {csrf}, "key": {"123.5-nonexistent"}}, 404},
		{"POST", "/sets/nope/delete", url.Values{"csrf": {csrf}, "key": {"1-x"}}, 404},
		{"POST", "/sets/dead/explode", url.Values{"csrf": {csrf}, "key": {"1-x"}}, 404},
		{"POST", "/legacy/steal", url.Values{"csrf": {csrf}, "class": {""}}, 400},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			code, body, _ := b.do(t, req{method: tc.method, path: tc.path, form: tc.form, basic: true})
			if code != tc.want {
				t.Fatalf("%s %s = %d, want %d\n%s", tc.method, tc.path, code, tc.want, body)
			}
		})
	}
}

func TestWebAuth(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	pause := fmt.Sprintf("/background_migrations/%d/pause", b.seed.Active)

	t.Run("reads need credentials", func(t *testing.T) {
		code, _, h := b.do(t, req{path: "/background_migrations"})
		if code != http.StatusUnauthorized || !strings.HasPrefix(h.Get("WWW-Authenticate"), "Basic") {
			t.Fatalf("GET without auth = %d %q", code, h.Get("WWW-Authenticate"))
		}
		if code, _, _ := b.do(t, req{path: "/healthz"}); code != 200 {
			t.Fatalf("healthz = %d", code)
		}
		if code, _, _ := b.do(t, req{path: "/static/app.css"}); code != 200 {
			t.Fatalf("static = %d", code)
		}
	})
	t.Run("unauthenticated POST refused", func(t *testing.T) {
		code, _, _ := b.do(t, req{method: "POST", path: pause, form: url.Values{}})
		if code != http.StatusUnauthorized {
			t.Fatalf("POST without auth = %d", code)
		}
		code, _, _ = b.do(t, req{method: "POST", path: pause, form: url.Values{}, header: map[string]string{"Authorization": "Bearer wrong"}})
		if code != http.StatusUnauthorized {
			t.Fatalf("POST with a wrong token = %d", code)
		}
		if st := b.status(t, b.seed.Active); st != web.StatusActive {
			t.Fatalf("status = %d after refused POSTs", st)
		}
	})
	t.Run("basic auth needs the CSRF token", func(t *testing.T) {
		code, _, _ := b.do(t, req{method: "POST", path: pause, form: url.Values{}, basic: true})
		if code != http.StatusForbidden {
			t.Fatalf("POST without csrf = %d", code)
		}
		code, _, _ = b.do(t, req{method: "POST", path: pause, form: url.Values{"csrf": {"0000"}}, basic: true})
		if code != http.StatusForbidden {
			t.Fatalf("POST with a bad csrf = %d", code)
		}
	})
	t.Run("cross-origin POST refused", func(t *testing.T) {
		csrf := b.csrf(t, "/background_migrations")
		code, _, _ := b.do(t, req{method: "POST", path: pause, form: url.Values{"csrf": {csrf}}, basic: true,
			header: map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}})
		if code != http.StatusForbidden {
			t.Fatalf("cross-site POST = %d", code)
		}
	})
	t.Run("token as basic password", func(t *testing.T) {
		code, _, _ := b.do(t, req{path: "/background_migrations", header: map[string]string{"Authorization": "Basic " + basic("ops", token)}})
		if code != 200 {
			t.Fatalf("GET with token as password = %d", code)
		}
	})
	if st := b.status(t, b.seed.Active); st != web.StatusActive {
		t.Fatalf("status = %d after refused POSTs", st)
	}
}

func TestWebWithoutCredentials(t *testing.T) {
	t.Parallel()
	b := setup(t, &opts{})
	code, body := b.get(t, "/background_migrations")
	if code != 200 {
		t.Fatalf("GET = %d", code)
	}
	contains(t, body, "Actions are disabled")
	code, _, _ = b.do(t, req{method: "POST", path: fmt.Sprintf("/background_migrations/%d/pause", b.seed.Active), form: url.Values{}})
	if code != http.StatusForbidden {
		t.Fatalf("POST = %d, want 403", code)
	}
	for _, addr := range []string{"0.0.0.0:7373", ":7373", "10.1.2.3:80", "[::]:7373"} {
		if _, err := web.New(web.Config{Listen: addr}); !errors.Is(err, web.ErrInsecure) {
			t.Errorf("New(%q) without auth = %v, want ErrInsecure", addr, err)
		}
	}
	for _, addr := range []string{"127.0.0.1:7373", "localhost:1", "[::1]:7373"} {
		if _, err := web.New(web.Config{Listen: addr}); err != nil {
			t.Errorf("New(%q) = %v", addr, err)
		}
	}
	if _, err := web.New(web.Config{Listen: "0.0.0.0:7373", Auth: web.Auth{Token: "x"}}); err != nil {
		t.Errorf("New with a token: %v", err)
	}
}

func TestWebMigrationActions(t *testing.T) {
	t.Parallel()
	for _, defaultMig := range []bool{false, true} {
		t.Run(fmt.Sprintf("default=%v", defaultMig), func(t *testing.T) {
			t.Parallel()
			b := setup(t, &opts{auth: web.Auth{Token: token, Username: user, Password: pass}, defaultMig: defaultMig})
			s := b.seed
			post := func(id int64, action string, form url.Values) int {
				t.Helper()
				if form == nil {
					form = url.Values{}
				}
				code, body, _ := b.do(t, req{method: "POST", path: fmt.Sprintf("/background_migrations/%d/%s", id, action), form: form, bearer: true})
				if code >= 500 {
					t.Fatalf("%s = %d\n%s", action, code, body)
				}
				return code
			}
			if c := post(s.Active, "resume", nil); c != http.StatusConflict {
				t.Fatalf("resume of an active migration = %d, want 409", c)
			}
			if c := post(s.Active, "pause", nil); c != http.StatusSeeOther {
				t.Fatalf("pause = %d", c)
			}
			if st := b.status(t, s.Active); st != web.StatusPaused {
				t.Fatalf("after pause: %d", st)
			}
			if c := post(s.Active, "resume", nil); c != http.StatusSeeOther || b.status(t, s.Active) != web.StatusActive {
				t.Fatalf("resume = %d", c)
			}
			if c := post(s.Failed, "retry", url.Values{"confirm": {"yes"}}); c != http.StatusSeeOther || b.status(t, s.Failed) != web.StatusActive {
				t.Fatalf("retry = %d", c)
			}
			if c := post(s.Paused, "mark_finished", url.Values{"confirm": {"yes"}}); c != http.StatusSeeOther || b.status(t, s.Paused) != web.StatusFinished {
				t.Fatalf("mark finished = %d", c)
			}
			// Through the engine either way: every batch it closed says who and when.
			var marked int
			if err := b.db.QueryRow(b.ctx, `SELECT count(*) FROM batched_background_migration_job_transition_logs l
				JOIN batched_background_migration_jobs j ON j.id = l.batched_background_migration_job_id
				WHERE j.batched_background_migration_id = $1 AND l.exception_class = 'Ferry::MarkedFinished'
				  AND l.exception_message LIKE 'marked finished by token@127.0.0.1 (web) at %'`, s.Paused).Scan(&marked); err != nil || marked == 0 {
				t.Fatalf("mark finished left no who/when in the transition log: %d rows (%v)", marked, err)
			}
			var n int
			if err := b.db.QueryRow(b.ctx, `SELECT count(*) FROM ferry_web_actions WHERE actor = 'token' AND migration_id = $1`, s.Active).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != 3 { // refused resume, pause, resume
				t.Fatalf("audit rows for the active migration = %d, want 3", n)
			}
			_, body := b.get(t, "/actions")
			contains(t, body, "mark finished", "resume", "pause", `class="err"`)
		})
	}
}

func TestWebSetActions(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	csrf := b.csrf(t, "/sets/retries")
	zs, err := b.rdb.ZRangeWithScores(b.ctx, "retry", 0, -1).Result()
	if err != nil || len(zs) != 1 {
		t.Fatalf("retry set: %v %v", zs, err)
	}
	key := fmt.Sprintf("%s-%s", strconvF(zs[0].Score), b.retryJID)
	before, _ := b.rdb.LLen(b.ctx, "queue:background_migration").Result()
	code, body, _ := b.do(t, req{method: "POST", path: "/sets/retries/retry", form: url.Values{"csrf": {csrf}, "key": {key}}, basic: true})
	if code != http.StatusSeeOther {
		t.Fatalf("retry now = %d\n%s", code, body)
	}
	after, _ := b.rdb.LLen(b.ctx, "queue:background_migration").Result()
	if n, _ := b.rdb.ZCard(b.ctx, "retry").Result(); n != 0 || after != before+1 {
		t.Fatalf("retry set %d, queue %d -> %d", n, before, after)
	}
	head, _ := b.rdb.LIndex(b.ctx, "queue:background_migration", 0).Result()
	if !strings.Contains(head, `"retry_count":1`) || !strings.Contains(head, b.retryJID) {
		t.Fatalf("requeued job = %s", head)
	}
	// Retrying it again finds nothing.
	code, _, _ = b.do(t, req{method: "POST", path: "/sets/retries/retry", form: url.Values{"csrf": {csrf}, "key": {key}}, basic: true})
	if code != http.StatusNotFound {
		t.Fatalf("second retry = %d", code)
	}
	dz, _ := b.rdb.ZRangeWithScores(b.ctx, "dead", 0, -1).Result()
	code, _, _ = b.do(t, req{method: "POST", path: "/sets/dead/delete", form: url.Values{"csrf": {csrf}, "key": {strconvF(dz[0].Score) + "-" + b.deadJID}}, basic: true})
	if n, _ := b.rdb.ZCard(b.ctx, "dead").Result(); code != http.StatusSeeOther || n != 0 {
		t.Fatalf("delete dead = %d, %d left", code, n)
	}
}

func TestWebMetrics(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	code, body := b.get(t, "/metrics")
	if code != 200 {
		t.Fatalf("/metrics = %d", code)
	}
	ident := fmt.Sprintf(`migration_id="%d",migration_identifier="CopyColumnUsingBackgroundMigrationJob/events.id"`, b.seed.Active)
	contains(t, body,
		"batched_migration_job_batch_size{"+ident+"} 21500",
		"batched_migration_job_duration_seconds{"+ident+"}",
		"batched_migration_migrated_tuples_total{"+ident+"}",
		"batched_migration_job_updated_tuples_total{"+ident+"}",
		"batched_migration_total_tuple_count{"+ident+"} 2e+06",
		"batched_migration_job_interval_seconds{"+ident+"} 2",
		`batched_migration_job_query_duration_seconds_bucket{`+ident+`,operation="update_all",le="5"}`,
		"ferry_batched_migration_eta_seconds{"+ident+"}",
		`ferry_queue_latency_seconds{queue="background_migration"}`,
		`ferry_queue_size{queue="background_migration"} 3`,
		"ferry_workers_busy 1",
		"ferry_workers_concurrency 20",
		"ferry_processes 2",
		"ferry_jobs_processed_total",
		"ferry_fetch_recoveries_total 0",
		`ferry_set_size{set="dead"} 1`,
		`ferry_scrape_source_up{source="postgres"} 1`,
		`ferry_scrape_source_up{source="redis"} 1`,
		"go_goroutines",
	)
	// The histogram counts each batch once across scrapes.
	_, again := b.get(t, "/metrics")
	want := `batched_migration_job_query_duration_seconds_count{` + ident + `,operation="update_all"} 48`
	if !strings.Contains(body, want) || !strings.Contains(again, want) {
		t.Errorf("histogram count: want %q in both scrapes", want)
	}
}

// touchArgs is a legacy class for the steal tests that the seeded Redis
// has no jobs of.
type touchArgs []any

func (touchArgs) Kind() string { return "TouchNothing" }

// withStealer is b's server again, with the real legacy steal behind the
// button (CopyColumn and TouchNothing registered).
func withStealer(t *testing.T, b *bundle) *bundle {
	t.Helper()
	reg := legacy.NewRegistry()
	legacy.AddCopyColumn(reg, legacy.CopyColumn{})
	legacy.Add(reg, legacy.PerformFunc[touchArgs](func(context.Context, *legacy.Job[touchArgs]) error { return nil }))
	co := &legacy.Coordinator{Redis: b.rdb, Runner: &legacy.Runner{Registry: reg}}
	srv, err := web.New(web.Config{DB: b.db, Redis: b.rdb, Auth: web.Auth{Username: user, Password: pass}, Stealer: process.Stealer{Co: co}})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	b2 := *b
	b2.ts = ts
	return &b2
}

func TestWebSteal(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	csrf := b.csrf(t, "/legacy")
	// Without a stealer the button is disabled and the POST says why.
	_, body := b.get(t, "/legacy")
	contains(t, body, "disabled", "ferry bm steal")
	code, _, _ := b.do(t, req{method: "POST", path: "/legacy/steal", form: url.Values{"csrf": {csrf}, "class": {"CopyColumn"}}, basic: true})
	if code != http.StatusNotImplemented {
		t.Fatalf("steal without a stealer = %d", code)
	}

	b2 := withStealer(t, b)
	csrf = b2.csrf(t, "/legacy")
	code, body, _ = b2.do(t, req{method: "POST", path: "/legacy/steal", form: url.Values{"csrf": {csrf}, "class": {"TouchNothing"}}, basic: true})
	if code != http.StatusSeeOther {
		t.Fatalf("steal of TouchNothing (no jobs) = %d, want 303: %.300s", code, body)
	}
}

// A class this process cannot perform (here a hostile name) is refused
// with 400 by the real steal, before any job leaves Redis.
func TestWebStealUnknownClass(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b2 := withStealer(t, b)
	csrf := b2.csrf(t, "/legacy")
	code, body, _ := b2.do(t, req{method: "POST", path: "/legacy/steal", form: url.Values{"csrf": {csrf}, "class": {"users; DROP TABLE x"}}, basic: true})
	if code != http.StatusBadRequest || !strings.Contains(body, "unknown background migration class") {
		t.Fatalf("steal of an unknown class = %d %.300s", code, body)
	}
}
