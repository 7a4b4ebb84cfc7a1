package web

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/ferrymigrate/ferry/internal/batched"
	"github.com/ferrymigrate/ferry/internal/ferryschema"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Auth holds the credentials that unlock mutations. Either a Token
// (sent as "Authorization: Bearer <token>", or as the password of HTTP
// basic auth with any user name) or a Username and Password for basic
// auth, or both.
type Auth struct {
	Token    string
	Username string
	Password string
}

// Enabled reports whether any credentials are configured.
func (a Auth) Enabled() bool { return a.Token != "" || (a.Username != "" && a.Password != "") }

// Stealer runs the remaining legacy background migrations of one class
// inline (GitLab's BackgroundMigration.steal). It is internal/legacy's API.
type Stealer interface {
	Steal(ctx context.Context, class string) (int, error)
}

// Config configures a [Server].
type Config struct {
	// Listen is the address for [Server.Run], default 127.0.0.1:7373.
	Listen string
	// DB holds the background migration tables; nil hides those pages.
	DB *pgxpool.Pool
	// Redis is the Sidekiq Redis; nil hides the Sidekiq pages.
	Redis redis.UniversalClient
	Auth  Auth
	// Migrations performs actions; default an [EngineMigrations] on DB
	// (finalizations it starts run until the process exits).
	Migrations Migrations
	// Stealer runs legacy migrations inline; nil disables the steal button.
	Stealer Stealer
	Logger  *zap.Logger
	// Refresh is how often the live view reloads, default 5s.
	Refresh time.Duration
	// Version is shown in the footer.
	Version string
	// Now is the clock, for tests.
	Now func() time.Time
	// AllowedHosts are the host names (or IPs), beside the loopback names
	// and Listen's own host, that requests may name in their Host header.
	AllowedHosts []string
	// Databases, when set, are every database whose batched migrations the
	// UI shows (GitLab's main and ci), chosen with ?database=NAME; the
	// first is the default. DB, when nil, is then the first one's: the
	// audit log of actions not about one migration is kept there. Unset,
	// DB (with Migrations) is the one database, "main".
	Databases []Database
}

// Database is one named database of [Config.Databases].
type Database struct {
	Name string
	DB   *pgxpool.Pool
	// Migrations performs actions; default an [EngineMigrations] on DB.
	Migrations Migrations
}

// dbView is one database as the handlers use it.
type dbView struct {
	name  string
	pool  *pgxpool.Pool
	store *store
	mig   Migrations
}

// ErrInsecure is returned by [New] for a non-loopback listen address
// without credentials: the UI can pause and mark migrations finished.
var ErrInsecure = errors.New("web: refusing to listen on a non-loopback address without credentials (set web.token or FERRY_WEB_TOKEN, or web.username and web.password)")

// Server is the UI and metrics HTTP server.
type Server struct {
	cfg      Config
	log      *zap.Logger
	dbs      []*dbView // the default first; empty: no database
	sk       *sidekiqView
	pages    *pages
	registry *prometheus.Registry
	handler  http.Handler
	csrfKey  []byte
	hosts    map[string]bool // allowed Host names besides loopback ones
}

// New validates cfg and builds the server.
func New(cfg Config) (*Server, error) {
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:7373"
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = 5 * time.Second
	}
	if !cfg.Auth.Enabled() && !IsLoopback(cfg.Listen) {
		return nil, fmt.Errorf("%w: listen %q", ErrInsecure, cfg.Listen)
	}
	if (cfg.Auth.Username == "") != (cfg.Auth.Password == "") {
		return nil, errors.New("web: username and password must be set together")
	}
	if len(cfg.Databases) == 0 && cfg.DB != nil {
		cfg.Databases = []Database{{Name: batched.DefaultDatabase, DB: cfg.DB, Migrations: cfg.Migrations}}
	}
	if cfg.DB == nil && len(cfg.Databases) > 0 {
		cfg.DB = cfg.Databases[0].DB
	}
	s := &Server{cfg: cfg, log: cfg.Logger.Named("web"), hosts: allowedHosts(cfg)}
	multi := len(cfg.Databases) > 1
	for _, d := range cfg.Databases {
		if d.DB == nil || d.Name == "" {
			return nil, fmt.Errorf("web: database %q needs a name and a pool", d.Name)
		}
		// Reads go through the engine's read model, writes through its
		// operations: the UI has no rules of its own for these tables.
		var eng *batched.Engine
		em, ok := d.Migrations.(*EngineMigrations)
		if ok && em != nil {
			eng = em.engine
		} else {
			eng = batched.NewEngine(d.DB, batched.Config{Logger: cfg.Logger})
		}
		v := &dbView{name: d.Name, pool: d.DB, store: &store{e: eng, db: d.Name, multi: multi}, mig: d.Migrations}
		if v.mig == nil {
			v.mig = NewEngineMigrations(context.Background(), eng, cfg.Logger)
		}
		s.dbs = append(s.dbs, v)
	}
	if cfg.Redis != nil {
		s.sk = &sidekiqView{rdb: cfg.Redis, now: cfg.Now}
	}
	// The CSRF key only has to outlive the pages this process served, so a
	// random one per start is enough and needs no configuration.
	s.csrfKey = make([]byte, 32)
	if _, err := rand.Read(s.csrfKey); err != nil {
		return nil, fmt.Errorf("web: csrf key: %w", err)
	}
	p, err := newPages()
	if err != nil {
		return nil, err
	}
	s.pages = p
	s.registry = prometheus.NewRegistry()
	stores := make([]*store, 0, len(s.dbs))
	for _, v := range s.dbs {
		stores = append(stores, v.store)
	}
	s.registry.MustRegister(newCollector(stores, cfg.Redis, s.log))
	s.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s.handler = s.routes()
	return s, nil
}

// Registry is the server's Prometheus registry, for adding metrics.
func (s *Server) Registry() *prometheus.Registry { return s.registry }

// Handler is the whole UI, for embedding in another server or tests.
func (s *Server) Handler() http.Handler { return s.handler }

// Setup creates or upgrades ferry's tables (ferryschema.Apply), the
// ferry_web_actions audit table included. Tables of a newer ferry are
// left as they are: they hold everything this one reads (rolling deploys).
func (s *Server) Setup(ctx context.Context) error {
	for _, v := range s.dbs {
		if err := ferryschema.Apply(ctx, v.pool); err != nil && !errors.Is(err, ferryschema.ErrNewerSchema) {
			if len(s.dbs) > 1 {
				// Another database being away must not keep the UI of
				// the others down; its pages show the error.
				s.log.Warn("cannot set up ferry's tables", zap.String("database", v.name), zap.Error(err))
				continue
			}
			return fmt.Errorf("web: %w", err)
		}
	}
	return nil
}

// Run serves on cfg.Listen until ctx is done, then shuts down gracefully.
// ready, if not nil, gets the bound address (useful with port 0).
func (s *Server) Run(ctx context.Context, ready func(addr net.Addr)) error {
	if err := s.Setup(ctx); err != nil {
		return err
	}
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("web: listen: %w", err)
	}
	return s.Serve(ctx, ln, ready)
}

// Serve is Run on an existing listener.
func (s *Server) Serve(ctx context.Context, ln net.Listener, ready func(addr net.Addr)) error {
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
		ErrorLog:          zap.NewStdLog(s.log),
	}
	s.log.Info("web UI listening", zap.String("addr", ln.Addr().String()), zap.Bool("auth", s.cfg.Auth.Enabled()))
	if ready != nil {
		ready(ln.Addr())
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("web: %w", err)
	case <-ctx.Done():
	}
	shCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shCtx); err != nil {
		return fmt.Errorf("web: shutdown: %w", err)
	}
	return nil
}

// IsLoopback reports whether a listen address only accepts local
// connections. An empty host (":7373") listens everywhere.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(staticFS, "static")
	mux.Handle("GET /static/", cacheStatic(http.StripPrefix("/static/", http.FileServerFS(static))))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{ErrorLog: zap.NewStdLog(s.log), Timeout: 30 * time.Second}))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		to := "/background_migrations"
		if r.URL.RawQuery != "" { // ?database=ci stays
			to += "?" + r.URL.RawQuery
		}
		http.Redirect(w, r, to, http.StatusFound)
	})
	mux.HandleFunc("GET /background_migrations", s.handleIndex)
	mux.HandleFunc("GET /background_migrations/{id}", s.handleShow)
	mux.HandleFunc("GET /background_migrations/{id}/jobs/{job}", s.handleJob)
	mux.HandleFunc("POST /background_migrations/{id}/{action}", s.mutation(s.handleAction))
	mux.HandleFunc("GET /legacy", s.handleLegacy)
	mux.HandleFunc("POST /legacy/steal", s.mutation(s.handleSteal))
	mux.HandleFunc("GET /busy", s.handleBusy)
	mux.HandleFunc("GET /queues", s.handleQueues)
	mux.HandleFunc("GET /actions", s.handleActions)
	mux.HandleFunc("GET /sets/{set}", s.handleSet)
	mux.HandleFunc("POST /sets/{set}/{action}", s.mutation(s.handleSetAction))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { s.notFound(w, r, "no such page") })

	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "cross-origin request refused", http.StatusForbidden)
	}))
	return s.checkHost(s.withAuth(cop.Handler(securityHeaders(mux))))
}

// allowedHosts are the Host names the server answers as, besides loopback
// ones: the configured names and the listen address's host when it is a
// specific one (not "" or 0.0.0.0 / ::, which name no host).
func allowedHosts(cfg Config) map[string]bool {
	m := map[string]bool{}
	for _, h := range cfg.AllowedHosts {
		m[normalHost(h)] = true
	}
	if host, _, err := net.SplitHostPort(cfg.Listen); err == nil && host != "" {
		if ip := net.ParseIP(host); ip == nil || !ip.IsUnspecified() {
			m[normalHost(host)] = true
		}
	}
	return m
}

// normalHost is a Host header's or a configured name's host, without the
// port, brackets and trailing dot, in lower case.
func normalHost(h string) string {
	if host, _, err := net.SplitHostPort(h); err == nil {
		h = host
	}
	h = strings.TrimSuffix(strings.Trim(h, "[]"), ".")
	return strings.ToLower(h)
}

// hostAllowed reports whether the server answers as host (a Host header).
func (s *Server) hostAllowed(host string) bool {
	h := normalHost(host)
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return true // RFC 6761: always the loopback interface
	}
	if net.ParseIP(h) != nil {
		// An address, not a name: a DNS-rebinding page always sends its
		// own domain name, and probes and Prometheus scrape by address.
		return true
	}
	return s.hosts[h]
}

// checkHost refuses requests naming a host the server does not listen as.
// A DNS-rebinding page (evil.example resolving to 127.0.0.1) is same-origin
// with the UI as far as the browser knows and could read every page of a
// read-only loopback server; its requests still say Host: evil.example.
// /healthz stays open to probes that send the pod's address.
func (s *Server) checkHost(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" && !s.hostAllowed(r.Host) {
			http.Error(w, "misdirected request: this ferry web server does not answer for host "+
				strconv.Quote(r.Host)+" (add it to web.allowed_hosts)", http.StatusMisdirectedRequest)
			return
		}
		h.ServeHTTP(w, r)
	})
}

func cacheStatic(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=3600")
		h.ServeHTTP(w, r)
	})
}

func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("Referrer-Policy", "same-origin")
		hd.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'")
		h.ServeHTTP(w, r)
	})
}

// principal is who made a request.
type principal struct {
	Name   string
	Method string // "token", "basic" or "" (anonymous)
}

type ctxKey struct{}

func who(r *http.Request) principal {
	p, _ := r.Context().Value(ctxKey{}).(principal)
	return p
}

// eq compares secrets in constant time. Comparing their SHA-256 digests
// keeps the length of the configured value from showing either.
func eq(a, b string) bool {
	ha, hb := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(ha[:], hb[:]) == 1
}

// authenticate checks the request's credentials against the config.
func (s *Server) authenticate(r *http.Request) (principal, bool) {
	a := s.cfg.Auth
	if h := r.Header.Get("Authorization"); strings.HasPrefix(h, "Bearer ") {
		if a.Token != "" && eq(strings.TrimPrefix(h, "Bearer "), a.Token) {
			return principal{Name: "token", Method: "token"}, true
		}
		return principal{}, false
	}
	user, pass, ok := r.BasicAuth()
	if !ok {
		return principal{}, false
	}
	// Every comparison runs whatever the others gave, so the time taken
	// does not tell whether the user name matched.
	userOK, passOK, tokenOK := eq(user, a.Username), eq(pass, a.Password), eq(pass, a.Token)
	if a.Username != "" && userOK && passOK {
		return principal{Name: user, Method: "basic"}, true
	}
	if a.Token != "" && tokenOK {
		name := user
		if name == "" {
			name = "token"
		}
		return principal{Name: name, Method: "basic"}, true
	}
	return principal{}, false
}

// withAuth: with credentials configured, every page but /healthz and the
// static assets needs them (job arguments can be sensitive). Without
// credentials (loopback only, see New) pages are readable and mutations
// are refused by [Server.mutation].
func (s *Server) withAuth(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.cfg.Auth.Enabled() || r.URL.Path == "/healthz" || strings.HasPrefix(r.URL.Path, "/static/") {
			h.ServeHTTP(w, r)
			return
		}
		p, ok := s.authenticate(r)
		if !ok {
			w.Header().Set("WWW-Authenticate", `Basic realm="ferry", charset="UTF-8"`)
			http.Error(w, "authentication required: basic auth (web.username/web.password, or any user and the token as password) or Authorization: Bearer <token>", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, p)))
	})
}

// csrfToken is tied to the user, so a token leaked from one user's page
// is useless to another, and to this process's random key.
func (s *Server) csrfToken(p principal) string {
	m := hmac.New(sha256.New, s.csrfKey)
	m.Write([]byte("csrf\x00" + p.Method + "\x00" + p.Name))
	return hex.EncodeToString(m.Sum(nil))
}

// mutation wraps a POST handler: it needs credentials and, for browser
// (basic auth) sessions, the CSRF token of the form, because browsers
// resend basic credentials on cross-site form posts. Bearer tokens are
// never sent automatically, so API clients need no CSRF token.
func (s *Server) mutation(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !s.cfg.Auth.Enabled() {
			s.fail(w, r, http.StatusForbidden, "actions are disabled: no credentials configured (set web.token / FERRY_WEB_TOKEN, or web.username and web.password)")
			return
		}
		p := who(r)
		if p.Method == "" {
			s.fail(w, r, http.StatusUnauthorized, "authentication required")
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		if err := r.ParseForm(); err != nil {
			s.fail(w, r, http.StatusBadRequest, "bad form: "+err.Error())
			return
		}
		if p.Method != "token" && !eq(r.PostFormValue("csrf"), s.csrfToken(p)) {
			s.fail(w, r, http.StatusForbidden, "invalid or missing CSRF token: reload the page and try again")
			return
		}
		h(w, r)
	}
}

// remoteAddr is the peer address; X-Forwarded-For is not trusted because
// nothing says a proxy is in front.
func remoteAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
