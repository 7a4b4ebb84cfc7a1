package cli

import (
	"encoding/json"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/ferrymigrate/ferry/internal/batched"
	"github.com/ferrymigrate/ferry/internal/testenv"
	"github.com/ferrymigrate/ferry/internal/web"
)

// seen is what one screen says about a migration.
type seen struct {
	percent, reason string
	eta             bool
}

// truthScreens reads migration 1 from every screen at the same moment.
type truthScreens struct {
	t  *testing.T
	c  *bbmCLI
	ts *httptest.Server
}

func (s *truthScreens) get(path string) string {
	s.t.Helper()
	resp, err := http.Get(s.ts.URL + path)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		s.t.Fatalf("GET %s = %d\n%s", path, resp.StatusCode, b)
	}
	return string(b)
}

var pctRe = regexp.MustCompile(`(\d+\.\d\d)%`)

// cliList is `bbm list`: "<status line> | id 1, 31.17%, 6234 rows, ...; <reason>".
func (s *truthScreens) cliList() seen {
	s.t.Helper()
	code, out, errs := s.c.run("bbm", "list")
	if code != 0 {
		s.t.Fatalf("list: %d %s", code, errs)
	}
	line := strings.SplitN(out, "\n", 2)[0]
	figures, reason, _ := strings.Cut(line, "; ")
	return seen{percent: pctRe.FindString(figures), reason: reason, eta: strings.Contains(figures, "ETA")}
}

// cliShow is `bbm show 1`: its Progress and Reason lines.
func (s *truthScreens) cliShow() seen {
	s.t.Helper()
	code, out, errs := s.c.run("bbm", "show", "1")
	if code != 0 {
		s.t.Fatalf("show: %d %s", code, errs)
	}
	var v seen
	for _, l := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(l, "Progress "):
			v.percent, v.eta = pctRe.FindString(l), strings.Contains(l, "ETA")
		case strings.HasPrefix(l, "Reason "):
			v.reason = strings.TrimSpace(strings.TrimPrefix(l, "Reason"))
		}
	}
	return v
}

// cliJSON is `bbm list --json`.
func (s *truthScreens) cliJSON() seen {
	s.t.Helper()
	code, out, errs := s.c.run("bbm", "list", "--json")
	var doc []struct {
		Progress batched.Progress `json:"progress_info"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &doc) != nil || len(doc) != 1 {
		s.t.Fatalf("list --json: %d %s %s", code, out, errs)
	}
	p := doc[0].Progress
	return seen{percent: fmt.Sprintf("%.2f%%", *p.Percent), reason: p.Reason, eta: p.ETA != nil}
}

func firstMatch(body, re string) (string, bool) {
	m := regexp.MustCompile(re).FindStringSubmatch(body)
	if m == nil {
		return "", false
	}
	return html.UnescapeString(m[1]), true
}

// webList is the migration's row on its tab of the index page.
func (s *truthScreens) webList(tab string) seen {
	s.t.Helper()
	body := s.get("/background_migrations?tab=" + tab)
	pct, _ := firstMatch(body, `data-pct>([^<]*)<`)
	reason, _ := firstMatch(body, `(?s)data-reason>([^<]*)<`)
	_, eta := firstMatch(body, `(data-eta)>`)
	return seen{percent: pct, reason: strings.TrimSpace(reason), eta: eta}
}

// webShow is the migration's page.
func (s *truthScreens) webShow() (seen, string) {
	s.t.Helper()
	body := s.get("/background_migrations/1")
	pct, _ := firstMatch(body, `id="progress" data-pct>([^<]*)<`)
	reason, _ := firstMatch(body, `id="reason">([^<]*)<`)
	_, eta := firstMatch(body, `(id="eta-value")`)
	return seen{percent: pct, reason: reason, eta: eta}, body
}

// metrics is /metrics: the progress ratio, whether an ETA is exported,
// and the state label.
func (s *truthScreens) metrics() (seen, string) {
	s.t.Helper()
	body := s.get("/metrics")
	ratio, ok := firstMatch(body, `ferry_batched_migration_progress_ratio\{migration_id="1",[^}]*\} (\S+)`)
	f, err := strconv.ParseFloat(ratio, 64)
	if !ok || err != nil {
		s.t.Fatalf("no progress ratio in /metrics (%v)", err)
	}
	_, eta := firstMatch(body, `(ferry_batched_migration_eta_seconds\{migration_id="1",)`)
	state, _ := firstMatch(body, `ferry_batched_migration_state\{migration_id="1",[^}]*state="([^"]*)"\} 1`)
	return seen{percent: fmt.Sprintf("%.2f%%", f*100), eta: eta}, state
}

// same asserts every screen shows the same progress figure and reason,
// and (ETA or not) the same answer to "is it moving"; it returns what
// they show.
func (s *truthScreens) same(tab string, state batched.State) seen {
	s.t.Helper()
	want := s.cliShow()
	screens := map[string]seen{"bbm list": s.cliList(), "bbm list --json": s.cliJSON(), "web list": s.webList(tab)}
	screens["web page"], _ = s.webShow()
	for name, got := range screens {
		if got != want {
			s.t.Errorf("%s shows %+v, bbm show %+v", name, got, want)
		}
	}
	m, gotState := s.metrics()
	if m.percent != want.percent || m.eta != want.eta || gotState != string(state) {
		s.t.Errorf("/metrics: %+v state %q, bbm show %+v state %s", m, gotState, want, state)
	}
	s.t.Logf("%s: every screen shows %+v", state, want)
	return want
}

// One truth: for the same migration at the same moment, `bbm list`,
// `bbm list --json`, `bbm show`, the web list, the web page and /metrics
// give the same progress figure, the same reason and the same answer to
// "is there an ETA": a failed migration with committed rows (a failed
// batch's partial work included), a paced one, a running one, and the
// same one under pause-all (banner, no ETA anywhere).
func TestBBMOneTruthCLIAndWeb(t *testing.T) {
	c := newBBMCLI(t)
	ctx := testenv.Context(t)
	if code, _, errs := c.run("bbm", "queue", "CopyColumnUsingBackgroundMigrationJob", "events", "id", `[["id"],["id_convert_to_bigint"]]`); code != 0 {
		t.Fatal(errs)
	}
	srv, err := web.New(web.Config{DB: c.pool})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	defer ts.Close()
	s := &truthScreens{t: t, c: c, ts: ts}

	// Failed: one batch of 5000 rows succeeded, one failed after
	// committing 1234 rows; 20000 rows in the table.
	if _, err := c.pool.Exec(ctx, `
		INSERT INTO batched_background_migration_jobs (batched_background_migration_id, min_value, max_value, batch_size, sub_batch_size,
			status, rows_done, attempts, started_at, finished_at, updated_at)
		VALUES (1, 1, 5000, 5000, 100, 3, 5000, 1, now() - interval '9 seconds', now() - interval '6 seconds', now() - interval '6 seconds'),
		       (1, 5001, 10000, 5000, 100, 2, 1234, 3, now() - interval '5 seconds', now(), now());
		UPDATE batched_background_migrations SET status = 4, hold_reason = 'stopped: 1 of 2 batches failed' WHERE id = 1`); err != nil {
		t.Fatal(err)
	}
	got := s.same("failed", batched.StateFailed)
	if got.percent != "31.17%" || got.eta ||
		got.reason != "stopped: 1 of 2 batches failed: `ferry bbm show 1` lists the errors, `ferry bbm retry 1` runs them again" {
		t.Fatalf("failed: %+v", got)
	}

	// Retried, a batch succeeded since: moving, with an ETA everywhere.
	if code, _, errs := c.run("bbm", "retry", "1"); code != 0 {
		t.Fatal(errs)
	}
	if _, err := c.pool.Exec(ctx, `
		INSERT INTO batched_background_migration_jobs (batched_background_migration_id, min_value, max_value, batch_size, sub_batch_size,
			status, rows_done, attempts, started_at, finished_at, updated_at)
		VALUES (1, 10001, 12000, 2000, 100, 3, 2000, 1, now() - interval '2 seconds', now(), now())`); err != nil {
		t.Fatal(err)
	}
	if got := s.same("queued", batched.StateRunning); got.percent != "41.17%" || !got.eta || got.reason != "" {
		t.Fatalf("running: %+v", got)
	}

	// Paced: the reason in words, still moving.
	paced := "other sessions are using the database: running 2% of the time (duty cycle), see `bbm.max_duty_under_load`"
	if _, err := c.pool.Exec(ctx, `UPDATE batched_background_migrations SET hold_reason = $1 WHERE id = 1`, "contention: "+paced); err != nil {
		t.Fatal(err)
	}
	if got := s.same("queued", batched.StatePaced); !got.eta || got.reason != paced {
		t.Fatalf("paced: %+v", got)
	}

	// Pause-all: no ETA and no rate anywhere, the banner and the reason.
	if code, _, errs := c.run("bbm", "pause-all"); code != 0 {
		t.Fatal(errs)
	}
	if got := s.same("queued", batched.StatePausedAll); got.percent != "41.17%" || got.eta || got.reason != batched.PausedAllReason {
		t.Fatalf("pause-all: %+v", got)
	}
	_, page := s.webShow()
	if !strings.Contains(page, `id="pause-all"`) || !strings.Contains(html.UnescapeString(page), batched.PausedAllReason) ||
		!strings.Contains(page, `<dd id="rate">—</dd>`) {
		t.Errorf("web page under pause-all: want the banner and no rate\n%s", page)
	}
	if list := s.get("/background_migrations"); !strings.Contains(list, `id="pause-all"`) || !strings.Contains(list, `data-rate>—<`) {
		t.Errorf("web list under pause-all: want the banner and no rate\n%s", list)
	}
	if _, out, _ := c.run("bbm", "show", "1"); strings.Contains(out, "ETA") || strings.Contains(out, "rows/s") {
		t.Errorf("bbm show under pause-all prints an ETA or a rate:\n%s", out)
	}

	// resume-all: moving again, banner gone.
	if code, _, errs := c.run("bbm", "resume-all"); code != 0 {
		t.Fatal(errs)
	}
	if got := s.same("queued", batched.StatePaced); !got.eta {
		t.Fatalf("after resume-all: %+v", got)
	}
	if _, page := s.webShow(); strings.Contains(page, `id="pause-all"`) {
		t.Error("banner still shown after resume-all")
	}
}
