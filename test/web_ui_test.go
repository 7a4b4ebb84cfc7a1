package test

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap/zaptest"

	"github.com/ferrymigrate/ferry/internal/batched"
	"github.com/ferrymigrate/ferry/internal/batched/batchedtest"
	"github.com/ferrymigrate/ferry/internal/ferryschema"
	"github.com/ferrymigrate/ferry/internal/testenv"
	"github.com/ferrymigrate/ferry/internal/web"
)

const chromiumPath = "/usr/bin/chromium"

// browser starts a headless Chromium for the test, with basic-auth
// credentials sent on every request when user is not empty.
func browser(t *testing.T, ctx context.Context, user, pass string) context.Context {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Skipf("browser test skipped: %s is missing (apt-get install chromium)", chromiumPath)
	}
	alloc, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(chromiumPath),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1360, 900),
	)
	t.Cleanup(cancelAlloc)
	bctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(cancel)
	if _, err := chromedp.Call(bctx, network.Enable, network.EnableParams{}); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	if user != "" {
		auth := "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
		if _, err := chromedp.Call(bctx, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{Headers: network.Headers{"Authorization": auth}}); err != nil {
			t.Fatal(err)
		}
	}
	return bctx
}

type webEnv struct {
	db   *pgxpool.Pool
	ctx  context.Context
	url  string
	seed batchedtest.Seeded
	srv  *web.Server
}

func startWeb(t *testing.T) *webEnv {
	t.Helper()
	ctx := testenv.Context(t)
	db := testenv.Postgres(t)
	rdb := testenv.Redis(t)
	if err := ferryschema.Apply(ctx, db); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	seed, err := batchedtest.Seed(ctx, db, now)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := batchedtest.SeedRedis(ctx, rdb, now); err != nil {
		t.Fatal(err)
	}
	log := zaptest.NewLogger(t)
	em := web.NewEngineMigrations(ctx, batched.NewEngine(db, batched.Config{Logger: log}), log)
	t.Cleanup(func() { em.Wait(); em.Close() })
	srv, err := web.New(web.Config{DB: db, Redis: rdb, Logger: log, Migrations: em, Version: "dev",
		Auth: web.Auth{Username: "admin", Password: "hunter2"}, Refresh: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	return &webEnv{db: db, ctx: ctx, url: ts.URL, seed: seed, srv: srv}
}

func run(t *testing.T, ctx context.Context, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatal(err)
	}
}

// text returns the visible text of the first element matching a CSS selector.
func text(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		t.Fatalf("text of %s: %v", sel, err)
	}
	return strings.TrimSpace(s)
}

func nav(url string) chromedp.Action[chromedp.Void] { return chromedp.Navigate(url) }
func visible(sel string) chromedp.Action[chromedp.Void] {
	return chromedp.WaitVisible(chromedp.CSS(sel))
}
func click(sel string) chromedp.Action[chromedp.Void] { return chromedp.Click(chromedp.CSS(sel)) }

func TestWebUIBrowser(t *testing.T) {
	env := startWeb(t)
	ctx := browser(t, env.ctx, "admin", "hunter2")

	t.Run("tabs", func(t *testing.T) {
		run(t, ctx, nav(env.url+"/background_migrations"), visible("#migrations"))
		if got := text(t, ctx, `a[data-tab="queued"] .count`); got != "3" {
			t.Fatalf("queued count %q", got)
		}
		run(t, ctx, click(`a[data-tab="failed"]`), visible(`a.tab.on[data-tab="failed"]`))
		if got, rows := text(t, ctx, `a[data-tab="failed"] .count`), text(t, ctx, "#migrations tbody"); got != "1" ||
			!strings.Contains(rows, "BackfillProjectNamespaceId: projects.id") {
			t.Fatalf("failed tab: count %q rows %q", got, rows)
		}
		run(t, ctx, click(`a[data-tab="finished"]`), visible(`a.tab.on[data-tab="finished"]`))
		if rows := text(t, ctx, "#migrations tbody"); !strings.Contains(rows, "notes.id") || !strings.Contains(rows, "100.00%") {
			t.Fatalf("finished tab: %q", rows)
		}
		run(t, ctx, click(`a[data-tab="finalizing"]`), visible(`a.tab.on[data-tab="finalizing"]`))
		if rows := text(t, ctx, "#migrations tbody"); !strings.Contains(rows, "ci_builds.id") {
			t.Fatalf("finalizing tab: %q", rows)
		}
	})

	// Screenshots of the seeded state, before the subtests below change it.
	if dir := os.Getenv("FERRY_WEB_SCREENSHOTS"); dir != "" {
		screenshots(t, ctx, env, dir)
	}

	detail := fmt.Sprintf("%s/background_migrations/%d", env.url, env.seed.Active)

	t.Run("chart", func(t *testing.T) {
		run(t, ctx, nav(detail), visible("svg#chart"))
		lines, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("svg#chart polyline").length`))
		if err != nil || lines != 3 {
			t.Fatalf("chart has %d series (%v), want 3 (batch size, duration, throughput)", lines, err)
		}
	})

	t.Run("progress moves live", func(t *testing.T) {
		run(t, ctx, nav(detail), visible("#progress"))
		before := text(t, ctx, "#progress")
		// Stand in for the engine: ten more batches succeed.
		if err := batchedtest.Advance(env.ctx, env.db, env.seed.Active, 10, 25_000, 3, time.Now()); err != nil {
			t.Fatal(err)
		}
		var now string
		testenv.Eventually(t, 20*time.Second, "the progress on the page to move without a reload", func() bool {
			now, _ = chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#progress")))
			return now != "" && now != before
		})
		// The live script swapped the content; the page was not reloaded.
		updated, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.dataset.updated || ""`))
		if err != nil || updated == "" {
			t.Fatalf("progress changed but not by the live refresh (%v)", err)
		}
		t.Logf("progress %s -> %s", before, now)
	})

	// The read model's state reaches the open page: pause-all brings a
	// banner and takes the ETA and the rate away, by the live refresh.
	t.Run("pause-all banner", func(t *testing.T) {
		run(t, ctx, nav(detail), visible("#eta-value"))
		e := batched.NewEngine(env.db, batched.Config{})
		if err := e.SetPausedAll(env.ctx, true); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = e.SetPausedAll(context.WithoutCancel(env.ctx), false) }()
		testenv.Eventually(t, 20*time.Second, "the pause-all banner without a reload", func() bool {
			n, _ := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("#pause-all").length`))
			return n == 1
		})
		eta, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("#eta-value").length`))
		if err != nil || eta != 0 {
			t.Fatalf("an ETA under pause-all (%v)", err)
		}
		if rate, reason := text(t, ctx, "#rate"), text(t, ctx, "#reason"); rate != "—" || reason != batched.PausedAllReason {
			t.Fatalf("under pause-all: rate %q, reason %q", rate, reason)
		}
	})

	t.Run("pause and resume", func(t *testing.T) {
		run(t, ctx, nav(detail), visible("#pause"), click("#pause"), visible("#resume"))
		if flash, status := text(t, ctx, ".flash.ok"), text(t, ctx, "#status"); flash != "Migration paused." || status != "paused" {
			t.Fatalf("after pause: flash %q status %q", flash, status)
		}
		run(t, ctx, click("#resume"), visible("#pause"))
		if status := text(t, ctx, "#status"); status != "active" {
			t.Fatalf("after resume: status %q", status)
		}
		run(t, ctx, nav(env.url+"/actions"), visible("#audit"))
		if audit := text(t, ctx, "#audit tbody"); !strings.Contains(audit, "admin") || !strings.Contains(audit, "pause") || !strings.Contains(audit, "resume") {
			t.Fatalf("audit log: %q", audit)
		}
	})

	t.Run("POST without CSRF token or credentials refused", func(t *testing.T) {
		run(t, ctx, nav(detail), visible("#pause"))
		// Same browser (credentials sent) but no CSRF token.
		code, err := chromedp.Run(ctx, chromedp.Evaluate[int](fmt.Sprintf(
			`fetch("/background_migrations/%d/pause", {method: "POST"}).then(r => r.status)`, env.seed.Active), chromedp.EvalAwaitPromise))
		if err != nil || code != http.StatusForbidden {
			t.Fatalf("POST without csrf from the page = %d (%v), want 403", code, err)
		}
		resp, err := http.Post(fmt.Sprintf("%s/background_migrations/%d/pause", env.url, env.seed.Active), "application/x-www-form-urlencoded", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("POST without credentials = %d, want 401", resp.StatusCode)
		}
		run(t, ctx, chromedp.Reload(), visible("#status"))
		if status := text(t, ctx, "#status"); status != "active" {
			t.Fatalf("status after refused POSTs: %q", status)
		}
	})

	t.Run("mark finished asks first", func(t *testing.T) {
		run(t, ctx, nav(fmt.Sprintf("%s/background_migrations/%d", env.url, env.seed.Failed)),
			visible("#mark_finished"), click("#mark_finished"), visible("#confirm"))
		if risk := text(t, ctx, "#confirm .risk"); !strings.Contains(risk, "does NOT migrate the remaining rows") {
			t.Fatalf("confirmation: %q", risk)
		}
	})

}

// screenshots saves the main pages as PNGs into dir
// (FERRY_WEB_SCREENSHOTS=docs/screenshots).
func screenshots(t *testing.T, ctx context.Context, env *webEnv, dir string) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []struct{ name, path, wait string }{
		{"background-migrations", "/background_migrations", "#migrations"},
		{"background-migrations-failed", "/background_migrations?tab=failed", "#migrations"},
		{"migration-detail", fmt.Sprintf("/background_migrations/%d", env.seed.Active), "svg#chart"},
		{"migration-failed-jobs", fmt.Sprintf("/background_migrations/%d", env.seed.Failed), "#failed-jobs"},
		{"migration-mark-finished-confirm", fmt.Sprintf("/background_migrations/%d?confirm=mark_finished", env.seed.Failed), "#confirm"},
		{"legacy", "/legacy", "#legacy"},
		{"busy", "/busy", "#processes"},
		{"queues", "/queues", "#queues"},
		{"retries", "/sets/retries", "#entries"},
	} {
		run(t, ctx, nav(env.url+p.path), visible(p.wait))
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, p.name+".png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
