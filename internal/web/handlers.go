package web

import (
	"bytes"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/ferrymigrate/ferry/internal/batched"
	"github.com/ferrymigrate/ferry/internal/legacy"
	"github.com/ferrymigrate/ferry/internal/sidekiq"
)

const perPage = 50

// pageData is what every template gets.
type pageData struct {
	Title   string
	Nav     string
	Refresh int // seconds; 0 disables live refresh
	CSRF    string
	User    string
	CanAct  bool   // credentials configured and presented
	ActNote string // why actions are disabled
	Version string
	Flash   string
	Error   string
	Notice  string
	// PausedAll shows the pause-all banner (migration pages).
	PausedAll       bool
	PausedAllReason string
	Body            any
}

func (s *Server) data(r *http.Request, nav, title string) *pageData {
	p := who(r)
	d := &pageData{Title: title, Nav: nav, Refresh: int(s.cfg.Refresh / time.Second), User: p.Name, Version: s.cfg.Version}
	switch {
	case !s.cfg.Auth.Enabled():
		d.ActNote = "Actions are disabled: no credentials are configured (set web.token / FERRY_WEB_TOKEN, or web.username and web.password)."
	case p.Method == "":
		d.ActNote = "Sign in to use actions."
	default:
		d.CanAct = true
		d.CSRF = s.csrfToken(p)
	}
	if msg, ok := flashes[r.URL.Query().Get("done")]; ok {
		d.Flash = msg
	}
	return d
}

// flashes are the only success messages a redirect can ask for, so a
// crafted link cannot put arbitrary text on the page.
var flashes = map[string]string{
	"pause":         "Migration paused.",
	"resume":        "Migration resumed.",
	"retry":         "Failed batches queued for retry; the migration is active again.",
	"finalize":      "Finalization started.",
	"mark_finished": "Migration marked as finished.",
	"steal":         "Legacy migrations ran inline.",
	"set_retry":     "Job queued.",
	"set_delete":    "Job deleted.",
}

func (s *Server) render(w http.ResponseWriter, r *http.Request, status int, page string, d *pageData) {
	var buf bytes.Buffer
	if err := s.pages.execute(&buf, page, d); err != nil {
		s.log.Error("render", zap.String("page", page), zap.Error(err))
		http.Error(w, "internal error rendering the page", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// fail renders an error page with the given status.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, status int, msg string) {
	d := s.data(r, "", http.StatusText(status))
	d.Error = msg
	d.Refresh = 0
	s.render(w, r, status, "error", d)
}

func (s *Server) notFound(w http.ResponseWriter, r *http.Request, what string) {
	s.fail(w, r, http.StatusNotFound, what)
}

// serverError distinguishes a missing schema (the operator's next step is
// `ferry setup`) from an unexpected failure.
func (s *Server) serverError(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, ErrNoTables) {
		s.fail(w, r, http.StatusServiceUnavailable, err.Error())
		return
	}
	if errors.Is(err, ErrNotFound) {
		s.notFound(w, r, "not found")
		return
	}
	var down *pgconn.ConnectError
	if errors.As(err, &down) {
		// Not ferry's fault, and it may pass: a proxy or a probe retries.
		s.log.Warn("database unavailable", zap.String("path", r.URL.Path), zap.Error(err))
		s.fail(w, r, http.StatusServiceUnavailable, "database unavailable: "+err.Error())
		return
	}
	s.log.Error("request failed", zap.String("path", r.URL.Path), zap.Error(err))
	s.fail(w, r, http.StatusInternalServerError, "internal error: "+err.Error())
}

// pathID parses a positive integer path value; anything else is a 404,
// since no such resource can exist.
func pathID(r *http.Request, name string) (int64, bool) {
	v := r.PathValue(name)
	id, err := strconv.ParseInt(v, 10, 64)
	if err != nil || id <= 0 {
		return 0, false
	}
	return id, true
}

// prefixedID reads a migration id written as GitLab and the CLI write it
// for several databases (ci_2): the database's view and the id, ok only
// when the name is configured and the id positive.
func (s *Server) prefixedID(raw string) (*dbView, int64, bool) {
	name, rawID, prefixed := batched.SplitRef(raw)
	if !prefixed {
		return nil, 0, false
	}
	i := slices.IndexFunc(s.dbs, func(v *dbView) bool { return v.name == name })
	id, err := strconv.ParseInt(rawID, 10, 64)
	if i < 0 || err != nil || id <= 0 {
		return nil, 0, false
	}
	return s.dbs[i], id, true
}

// redirectPrefixedID sends a migration id written as ci_2 to the page's
// own form (/background_migrations/2?database=ci), and reports whether it
// did.
func (s *Server) redirectPrefixedID(w http.ResponseWriter, r *http.Request) bool {
	raw := r.PathValue("id")
	v, id, ok := s.prefixedID(raw)
	if !ok {
		return false
	}
	u := *r.URL
	u.Path = strings.Replace(u.Path, "/background_migrations/"+raw, "/background_migrations/"+strconv.FormatInt(id, 10), 1)
	q := u.Query()
	q.Set("database", v.name)
	u.RawQuery = q.Encode()
	http.Redirect(w, r, u.RequestURI(), http.StatusFound)
	return true
}

// migrationOf resolves the {id} of an action: 2 with ?database= (the
// pages' forms), or ci_2 (as the CLI and GitLab write it; a POST cannot be
// redirected to the plain form without the client's help).
func (s *Server) migrationOf(w http.ResponseWriter, r *http.Request) (*dbView, int64, bool) {
	raw := r.PathValue("id")
	name, _, prefixed := batched.SplitRef(raw)
	if !prefixed || len(s.dbs) == 0 {
		v, ok := s.needDB(w, r)
		if !ok {
			return nil, 0, false
		}
		id, ok := pathID(r, "id")
		if !ok {
			s.notFound(w, r, "no such migration")
		}
		return v, id, ok
	}
	if q := r.URL.Query().Get("database"); q != "" && q != name {
		s.fail(w, r, http.StatusBadRequest, fmt.Sprintf("migration %s is on database %s, but ?database=%s names another", raw, name, q))
		return nil, 0, false
	}
	v, id, ok := s.prefixedID(raw)
	if !ok {
		s.notFound(w, r, fmt.Sprintf("no such migration %q: write its id as 2, or as %s_2 with the database's name (%s)",
			raw, s.dbs[0].name, strings.Join(dbViewNames(s.dbs), ", ")))
	}
	return v, id, ok
}

func dbViewNames(dbs []*dbView) []string {
	out := make([]string, len(dbs))
	for i, v := range dbs {
		out[i] = v.name
	}
	return out
}

// pageParam parses ?page=, 400 on garbage.
func pageParam(r *http.Request) (int, error) {
	v := r.URL.Query().Get("page")
	if v == "" {
		return 1, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 1_000_000 {
		return 0, fmt.Errorf("bad page %q: must be a whole number from 1 to 1000000", v)
	}
	return n, nil
}

// needDB is the database a migration page or action is about:
// ?database=NAME (GitLab's admin page), default the first configured.
func (s *Server) needDB(w http.ResponseWriter, r *http.Request) (*dbView, bool) {
	if len(s.dbs) == 0 {
		s.fail(w, r, http.StatusServiceUnavailable, "no database configured: set DATABASE_URL or --database-url to see background migrations")
		return nil, false
	}
	name := r.URL.Query().Get("database")
	if name == "" {
		return s.dbs[0], true
	}
	for _, v := range s.dbs {
		if v.name == name {
			return v, true
		}
	}
	s.notFound(w, r, fmt.Sprintf("no database %q: configured databases are %s", name, strings.Join(dbViewNames(s.dbs), ", ")))
	return nil, false
}

// dbNames lists the databases shown, for the selector (nil with one).
func (s *Server) dbNames() []string {
	if len(s.dbs) < 2 {
		return nil
	}
	return dbViewNames(s.dbs)
}

func (s *Server) needRedis(w http.ResponseWriter, r *http.Request) bool {
	if s.sk == nil {
		s.fail(w, r, http.StatusServiceUnavailable, "no Redis configured")
		return false
	}
	return true
}

type indexBody struct {
	Tab        Tab
	Tabs       []Tab
	Counts     map[Tab]int64
	Migrations []*Migration
	Page       int
	HasNext    bool
	// Databases lists the databases for the selector when there are
	// several; Database is the one shown, DBAmp its query parameter.
	Databases []string
	Database  string
	DBAmp     template.URL
}

// bbmData is s.data for the migration pages of database v, with its
// pause-all banner.
func (s *Server) bbmData(r *http.Request, v *dbView, title string) (*pageData, error) {
	d := s.data(r, "bbm", title)
	paused, err := v.store.PausedAll(r.Context())
	if err != nil {
		return nil, err
	}
	d.PausedAll, d.PausedAllReason = paused, batched.PausedAllReason
	if len(s.dbs) > 1 {
		d.PausedAllReason = batched.PausedAllReasonIn(v.name)
	}
	return d, nil
}

func (s *Server) handleIndex(w http.ResponseWriter, r *http.Request) {
	v, ok := s.needDB(w, r)
	if !ok {
		return
	}
	tab := Tab(r.URL.Query().Get("tab"))
	if tab == "" {
		tab = TabQueued
	}
	if tab.statuses() == nil {
		s.fail(w, r, http.StatusBadRequest, fmt.Sprintf("unknown tab %q: use queued, finalizing, failed or finished", tab))
		return
	}
	page, err := pageParam(r)
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	counts, err := v.store.TabCounts(r.Context())
	if err != nil {
		s.serverError(w, r, s.dbErr(v, err))
		return
	}
	ms, err := v.store.List(r.Context(), tab, perPage+1, (page-1)*perPage)
	if err != nil {
		s.serverError(w, r, s.dbErr(v, err))
		return
	}
	b := &indexBody{Tab: tab, Tabs: Tabs, Counts: counts, Page: page, Databases: s.dbNames(), Database: v.name}
	b.DBAmp = dbQuery("&", s.param(v))
	if len(ms) > perPage {
		ms, b.HasNext = ms[:perPage], true
	}
	b.Migrations = ms
	d, err := s.bbmData(r, v, "Background migrations")
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	d.Body = b
	s.render(w, r, http.StatusOK, "index", d)
}

type showBody struct {
	M        *Migration
	Recent   []*Job
	Failed   []*Job
	Chart    template.HTML
	Actions  []Action
	Confirm  string // action awaiting confirmation
	Risk     string
	Settings [][2]string
}

// risks name what an operator takes on with the confirmed actions.
var risks = map[string]string{
	"mark_finished": "Marking finished does NOT migrate the remaining rows. The next upgrade step will assume every row was migrated; " +
		"rows past the last successful batch stay unmigrated unless you fixed them by hand. Only do this when you know the data is complete.",
	"finalize": "Finalizing runs all remaining batches now, back to back, ignoring the interval and health throttling. " +
		"It can load the database heavily until it is done.",
	"retry": "Retrying re-runs the failed batches with the same code. If they failed on bad data they will fail again; check the errors first.",
}

func (s *Server) handleShow(w http.ResponseWriter, r *http.Request) {
	if s.redirectPrefixedID(w, r) {
		return
	}
	v, ok := s.needDB(w, r)
	if !ok {
		return
	}
	id, ok := pathID(r, "id")
	if !ok {
		s.notFound(w, r, "no such migration")
		return
	}
	confirm := r.URL.Query().Get("confirm")
	if _, ok := risks[confirm]; confirm != "" && !ok {
		s.fail(w, r, http.StatusBadRequest, fmt.Sprintf("nothing to confirm for %q", confirm))
		return
	}
	ctx := r.Context()
	m, err := v.store.Get(ctx, id)
	if errors.Is(err, ErrNotFound) {
		s.notFound(w, r, fmt.Sprintf("no background migration with id %d%s", id, s.inDB(v)))
		return
	}
	if err != nil {
		s.serverError(w, r, s.dbErr(v, err))
		return
	}
	b := &showBody{M: m, Confirm: confirm, Risk: risks[confirm]}
	if b.Recent, err = v.store.Jobs(ctx, id, false, 20); err != nil {
		s.serverError(w, r, err)
		return
	}
	if b.Failed, err = v.store.Jobs(ctx, id, true, 50); err != nil {
		s.serverError(w, r, err)
		return
	}
	pts, err := v.store.Chart(ctx, id, 200)
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	b.Chart = renderChart(pts)
	if acts, err := listActions(ctx, v.pool, &id, 20); err == nil {
		b.Actions = acts
	} else if !errors.Is(err, ErrNoTables) {
		s.log.Warn("read actions", zap.Error(err))
	}
	b.Settings = settings(m)
	d, err := s.bbmData(r, v, fmt.Sprintf("%s: %s.%s", m.JobClassName, m.TableName, m.ColumnName))
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	if confirm != "" {
		d.Refresh = 0 // do not reload a page with a pending confirmation
	}
	d.Body = b
	s.render(w, r, http.StatusOK, "show", d)
}

func settings(m *Migration) [][2]string {
	i64 := func(p *int64) string {
		if p == nil {
			return "—"
		}
		return strconv.FormatInt(*p, 10)
	}
	t := func(p *time.Time) string {
		if p == nil {
			return "—"
		}
		return p.UTC().Format("2006-01-02 15:04:05 MST")
	}
	maxBatch := i64(m.MaxBatchSize)
	if m.MaxBatchSize == nil {
		maxBatch = "— (2,000,000)"
	}
	out := [][2]string{
		{"Id", m.Ref()},
		{"Job class", m.JobClassName},
		{"Table", m.TableName},
		{"Column", m.ColumnName},
		{"Job arguments", m.JobArguments},
		{"Min value", i64(m.MinValue)},
		{"Max value", i64(m.MaxValue)},
		{"Batch size", strconv.FormatInt(m.BatchSize, 10)},
		{"Sub-batch size", strconv.FormatInt(m.SubBatchSize, 10)},
		{"Max batch size", maxBatch},
		{"Interval", fmt.Sprintf("%ds", m.Interval)},
		{"Pause time", fmt.Sprintf("%d ms", m.PauseMS)},
		{"Total tuple count (estimate)", i64(m.TotalTupleCount)},
		{"Rows done (committed)", strconv.FormatInt(m.RowsDone, 10)},
		{"Batches", fmt.Sprintf("%d (%d failed)", m.JobCount, m.FailedJobs)},
		{"Created on", t(&m.CreatedAt)},
		{"Last updated", t(&m.UpdatedAt)},
		{"Started at", t(m.StartedAt)},
		{"Finished at", t(m.FinishedAt)},
		{"On hold until", t(m.OnHoldUntil)},
	}
	if m.dbParam != "" {
		out = append([][2]string{{"Database", m.Database}}, out...)
	}
	return out
}

type jobBody struct {
	M           *Migration
	J           *Job
	Transitions []Transition
}

func (s *Server) handleJob(w http.ResponseWriter, r *http.Request) {
	if s.redirectPrefixedID(w, r) {
		return
	}
	v, ok := s.needDB(w, r)
	if !ok {
		return
	}
	id, ok1 := pathID(r, "id")
	jid, ok2 := pathID(r, "job")
	if !ok1 || !ok2 {
		s.notFound(w, r, "no such job")
		return
	}
	ctx := r.Context()
	m, err := v.store.Get(ctx, id)
	if errors.Is(err, ErrNotFound) {
		s.notFound(w, r, fmt.Sprintf("no background migration with id %d%s", id, s.inDB(v)))
		return
	}
	if err != nil {
		s.serverError(w, r, s.dbErr(v, err))
		return
	}
	j, err := v.store.Job(ctx, id, jid)
	if errors.Is(err, ErrNotFound) {
		s.notFound(w, r, fmt.Sprintf("migration %s has no job %d", s.ref(v, id), jid))
		return
	}
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	tr, err := v.store.Transitions(ctx, jid)
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	d, err := s.bbmData(r, v, fmt.Sprintf("Job %d of migration %s", jid, m.Ref()))
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	d.Body = &jobBody{M: m, J: j, Transitions: tr}
	s.render(w, r, http.StatusOK, "job", d)
}

func (s *Server) handleAction(w http.ResponseWriter, r *http.Request) {
	v, id, ok := s.migrationOf(w, r)
	if !ok {
		return
	}
	action := r.PathValue("action")
	ctx := r.Context()
	p := who(r)
	var err error
	if _, needs := risks[action]; needs && r.PostFormValue("confirm") != "yes" {
		s.fail(w, r, http.StatusBadRequest, fmt.Sprintf("%s needs confirmation: use the button on the migration page", strings.ReplaceAll(action, "_", " ")))
		return
	}
	switch action {
	case "pause":
		err = v.mig.Pause(ctx, id)
	case "resume":
		err = v.mig.Resume(ctx, id)
	case "retry":
		err = v.mig.Retry(ctx, id)
	case "finalize":
		err = v.mig.Finalize(ctx, id)
	case "mark_finished":
		err = v.mig.MarkFinished(ctx, id, p.Name+"@"+remoteAddr(r)+" (web)")
	default:
		s.notFound(w, r, fmt.Sprintf("no action %q", action))
		return
	}
	if errors.Is(err, ErrNotFound) {
		s.notFound(w, r, fmt.Sprintf("no background migration with id %d%s", id, s.inDB(v)))
		return
	}
	target := "migration " + s.ref(v, id)
	q := dbQuery("&", s.param(v))
	if action == "finalize" && err == nil {
		// It runs on after the response: the row records the start, and
		// the migration's page (and this server's log) how it ended.
		target += " (started; it runs in this web server's background)"
	}
	s.auditIn(r, v.pool, action, target, &id, err)
	switch {
	case err == nil:
		http.Redirect(w, r, fmt.Sprintf("/background_migrations/%d?done=%s%s", id, action, q), http.StatusSeeOther)
	case errors.Is(err, ErrInvalidState):
		s.fail(w, r, http.StatusConflict, err.Error())
	case errors.Is(err, ErrUnsupported):
		s.fail(w, r, http.StatusNotImplemented, err.Error())
	default:
		s.serverError(w, r, err)
	}
}

// audit records an action; failure to record is logged, not fatal: the
// action already happened.
func (s *Server) audit(r *http.Request, action, target string, migrationID *int64, err error) {
	s.auditIn(r, s.cfg.DB, action, target, migrationID, err)
}

// auditIn records an action in db: a migration's actions in its own
// database, next to its rows (ids repeat across databases).
func (s *Server) auditIn(r *http.Request, db *pgxpool.Pool, action, target string, migrationID *int64, err error) {
	p := who(r)
	a := Action{CreatedAt: s.cfg.Now(), Actor: p.Name, RemoteAddr: remoteAddr(r), Action: action, Target: target, MigrationID: migrationID}
	if err != nil {
		a.Error = err.Error()
	}
	fields := []zap.Field{zap.String("actor", a.Actor), zap.String("remote", a.RemoteAddr), zap.String("action", action), zap.String("target", target)}
	if err != nil {
		s.log.Warn("web action failed", append(fields, zap.Error(err))...)
	} else {
		s.log.Info("web action", fields...)
	}
	if db == nil {
		return
	}
	if rerr := recordAction(r.Context(), db, a); rerr != nil {
		s.log.Error("web action not recorded", append(fields, zap.Error(rerr))...)
	}
}

type legacyRow struct {
	Class  string
	Counts sidekiq.JobCounts
}

type legacyBody struct {
	Rows     []legacyRow
	CanSteal bool
	Total    int
}

func (s *Server) handleLegacy(w http.ResponseWriter, r *http.Request) {
	if !s.needRedis(w, r) {
		return
	}
	rem, err := s.sk.LegacyRemaining(r.Context())
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	b := &legacyBody{CanSteal: s.cfg.Stealer != nil}
	for c, n := range rem {
		b.Rows = append(b.Rows, legacyRow{c, *n})
		b.Total += n.Remaining()
	}
	sort.Slice(b.Rows, func(i, j int) bool { return b.Rows[i].Class < b.Rows[j].Class })
	d := s.data(r, "legacy", "Legacy background migrations")
	d.Body = b
	s.render(w, r, http.StatusOK, "legacy", d)
}

func (s *Server) handleSteal(w http.ResponseWriter, r *http.Request) {
	class := strings.TrimSpace(r.PostFormValue("class"))
	if class == "" || len(class) > 200 || strings.ContainsAny(class, "\x00\r\n") {
		s.fail(w, r, http.StatusBadRequest, "bad class name")
		return
	}
	if s.cfg.Stealer == nil {
		s.fail(w, r, http.StatusNotImplemented, "steal is not available in this build: use `ferry bm steal CLASS`")
		return
	}
	_, err := s.cfg.Stealer.Steal(r.Context(), class)
	s.audit(r, "steal", "legacy "+class, nil, err)
	if errors.Is(err, legacy.ErrUnknownMigration) {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	if err != nil {
		s.fail(w, r, http.StatusInternalServerError, "steal "+class+": "+err.Error())
		return
	}
	http.Redirect(w, r, "/legacy?done=steal", http.StatusSeeOther)
}

type busyBody struct {
	Processes []Process
	Work      []Work
	Busy      int
	Threads   int
	Stats     Stats
}

func (s *Server) handleBusy(w http.ResponseWriter, r *http.Request) {
	if !s.needRedis(w, r) {
		return
	}
	procs, err := s.sk.Processes(r.Context())
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	st, err := s.sk.Stats(r.Context())
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	b := &busyBody{Processes: procs, Stats: st}
	for _, p := range procs {
		b.Busy += p.Busy
		b.Threads += p.Concurrency
		b.Work = append(b.Work, p.Work...)
	}
	d := s.data(r, "busy", "Busy")
	d.Body = b
	s.render(w, r, http.StatusOK, "busy", d)
}

type queuesBody struct {
	Queues []QueueInfo
	Stats  Stats
}

func (s *Server) handleQueues(w http.ResponseWriter, r *http.Request) {
	if !s.needRedis(w, r) {
		return
	}
	qs, err := s.sk.Queues(r.Context())
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	st, err := s.sk.Stats(r.Context())
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	d := s.data(r, "queues", "Queues")
	d.Body = &queuesBody{Queues: qs, Stats: st}
	s.render(w, r, http.StatusOK, "queues", d)
}

type setBody struct {
	Set     string
	Title   string
	Entries []Entry
	Total   int64
	Page    int
	HasNext bool
}

var setTitles = map[string]string{"retries": "Retries", "dead": "Dead", "scheduled": "Scheduled"}

func (s *Server) handleSet(w http.ResponseWriter, r *http.Request) {
	if !s.needRedis(w, r) {
		return
	}
	name := r.PathValue("set")
	key, ok := setKey(name)
	if !ok {
		s.notFound(w, r, fmt.Sprintf("no set %q", name))
		return
	}
	page, err := pageParam(r)
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	es, total, err := s.sk.Entries(r.Context(), key, int64(page-1)*perPage, perPage)
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	d := s.data(r, name, setTitles[name])
	d.Body = &setBody{Set: name, Title: setTitles[name], Entries: es, Total: total, Page: page, HasNext: int64(page*perPage) < total}
	s.render(w, r, http.StatusOK, "set", d)
}

func (s *Server) handleSetAction(w http.ResponseWriter, r *http.Request) {
	if !s.needRedis(w, r) {
		return
	}
	name := r.PathValue("set")
	key, ok := setKey(name)
	if !ok {
		s.notFound(w, r, fmt.Sprintf("no set %q", name))
		return
	}
	entry := r.PostFormValue("key")
	if _, _, err := parseKey(entry); err != nil {
		s.fail(w, r, http.StatusBadRequest, fmt.Sprintf("bad entry key %q", entry))
		return
	}
	var err error
	action := r.PathValue("action")
	switch action {
	case "retry":
		err = s.sk.RetryNow(r.Context(), key, entry)
	case "delete":
		err = s.sk.Delete(r.Context(), key, entry)
	default:
		s.notFound(w, r, fmt.Sprintf("no action %q", action))
		return
	}
	if errors.Is(err, ErrNotFound) {
		s.notFound(w, r, "that job is no longer in the set (it may have run or been removed)")
		return
	}
	s.audit(r, "set_"+action, name+" "+entry, nil, err)
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	http.Redirect(w, r, "/sets/"+url.PathEscape(name)+"?done=set_"+action, http.StatusSeeOther)
}

func (s *Server) handleActions(w http.ResponseWriter, r *http.Request) {
	v, ok := s.needDB(w, r)
	if !ok {
		return
	}
	acts, err := listActions(r.Context(), v.pool, nil, 200)
	if err != nil {
		s.serverError(w, r, s.dbErr(v, err))
		return
	}
	d := s.data(r, "actions", "Operator actions")
	d.Body = &actionsBody{Actions: acts, Databases: s.dbNames(), Database: v.name, DBQuery: dbQuery("?", s.param(v))}
	s.render(w, r, http.StatusOK, "actions", d)
}

// actionsBody is the audit page of one database; with several, tabs
// select it and its links to migrations carry it.
type actionsBody struct {
	Actions   []Action
	Databases []string
	Database  string
	DBQuery   template.URL
}

// param is v's name where links and commands must name it (?database=,
// ci_3): when several databases are shown; "" with one.
func (s *Server) param(v *dbView) string {
	if len(s.dbs) > 1 {
		return v.name
	}
	return ""
}

// inDB is " in database NAME" when several databases are shown.
func (s *Server) inDB(v *dbView) string {
	if len(s.dbs) > 1 {
		return " in database " + v.name
	}
	return ""
}

// ref names migration id as the commands take it: ci_3 when several
// databases are shown, 3 otherwise.
func (s *Server) ref(v *dbView, id int64) string {
	return batched.Ref(s.param(v), id)
}

// dbErr names the database of a failed read when several are shown.
func (s *Server) dbErr(v *dbView, err error) error {
	if err == nil || len(s.dbs) < 2 {
		return err
	}
	return fmt.Errorf("database %s: %w", v.name, err)
}
