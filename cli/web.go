package cli

import (
	"context"
	"errors"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/ferrymigrate/ferry/config"
	"github.com/ferrymigrate/ferry/internal/batched"
	"github.com/ferrymigrate/ferry/internal/web"
	"github.com/ferrymigrate/ferry/process"
)

func newWebCmd(a *App) *cobra.Command {
	var listen string
	cmd := &cobra.Command{
		Use:   "web",
		Short: "Serve the admin UI and Prometheus /metrics",
		Long: `Serve ferry's admin UI: batched background migrations (tabs Queued,
Finalizing, Failed, Finished; progress, rows/s, ETA, a chart per migration,
failed jobs with their errors; pause, resume, retry, finalize, mark
finished), legacy migrations, and the Sidekiq views (busy processes,
queues with latency, retry/scheduled/dead sets). /metrics serves
Prometheus metrics, including GitLab's batched_migration_* names.

It listens on 127.0.0.1:7373 by default. Actions need credentials:
web.token (or FERRY_WEB_TOKEN), sent as "Authorization: Bearer <token>" or
as the basic-auth password with any user name; or web.username and
web.password. With credentials set, every page needs them. Listening on a
non-loopback address without credentials is refused. Every action is
recorded with who did it in the ferry_web_actions table.

Requests must name the server by a loopback name (localhost, 127.0.0.1,
[::1]), the host of --listen, or one of web.allowed_hosts in their Host
header; others get 421 (this defeats DNS rebinding). Behind a proxy, or
listening on 0.0.0.0, list the names clients and Prometheus use there.

To serve the UI from every worker instead, set web.serve_in_worker: true
in the config file.`,
		Example: `  ferry web
  FERRY_WEB_TOKEN=s3cret ferry web --listen 10.0.0.5:7373`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			return a.runWeb(ctx)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "", "address to listen on (default 127.0.0.1:7373, config web.listen)")
	a.PreValidate(cmd, func(c *config.Config) {
		if cmd.Flags().Changed("listen") {
			c.Web.Listen = listen
		}
	})
	return cmd
}

func webAuth(c config.Web) web.Auth {
	return web.Auth{Token: c.Token, Username: c.Username, Password: c.Password}
}

// webErr makes configuration mistakes exit 2 with the field named.
func webErr(err error) error {
	if errors.Is(err, web.ErrInsecure) {
		return Usage(&config.FieldError{Field: "web.listen", Msg: err.Error()})
	}
	return err
}

func (a *App) runWeb(ctx context.Context) error {
	rdb, err := a.Redis(ctx)
	if err != nil {
		return err
	}
	cfg := web.Config{Listen: a.Cfg.Web.Listen, Redis: rdb, Auth: webAuth(a.Cfg.Web), Logger: a.Log, Version: a.Version,
		AllowedHosts: a.Cfg.Web.AllowedHosts}
	co, err := a.bmCoordinator(ctx, false)
	if err != nil {
		return err
	}
	cfg.Stealer = process.Stealer{Co: co}
	// One section per database (?database=NAME, as GitLab's admin page).
	var fins []*web.EngineMigrations
	for _, d := range a.Cfg.DatabaseList() {
		e, err := a.bbmEngineFor(ctx, d.Name) // also creates/upgrades the tables
		if err != nil && d.Name != config.DefaultDatabase {
			// Another database being away must not keep the UI of the
			// others down: its pages show the error until it answers.
			var pool *pgxpool.Pool
			if pool, err = a.openDB(ctx, d.Name, true); err == nil {
				e = batched.NewEngine(pool, batched.Config{Logger: a.Log, Registry: a.Reg.BBM, Database: a.hintDB(d.Name)})
			}
		}
		if err != nil {
			return err
		}
		fin := web.NewEngineMigrations(ctx, e, a.Log)
		fins = append(fins, fin)
		cfg.Databases = append(cfg.Databases, web.Database{Name: d.Name, DB: e.Pool(), Migrations: fin})
		if d.Name == config.DefaultDatabase {
			cfg.DB = e.Pool()
		}
	}
	if len(fins) == 0 {
		a.Log.Warn("DATABASE_URL is not set: the background migration pages are disabled")
	}
	srv, err := web.New(cfg)
	if err != nil {
		return webErr(err)
	}
	err = srv.Run(ctx, func(addr net.Addr) {
		a.Log.Info("ferry web ready", zap.String("url", "http://"+addr.String()+"/"))
	})
	for _, fin := range fins {
		fin.Wait()
	}
	return err
}
