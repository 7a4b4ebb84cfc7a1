package scheduler

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/robfig/cron/v3"
	"go.uber.org/zap"

	"github.com/ferrymigrate/ferry/internal/logrepeat"
)

// Schedule tells when a job runs next; cron schedules satisfy it.
type Schedule interface {
	Next(time.Time) time.Time
}

// Func is a scheduled function.
type Func func(ctx context.Context) error

// ErrInvalidSpec is returned for a spec that does not parse.
var ErrInvalidSpec = errors.New("scheduler: invalid schedule spec")

// ErrRunning is returned when adding jobs to a running scheduler.
var ErrRunning = errors.New("scheduler: already running")

var parser = cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// Parse parses a cron spec ("*/5 * * * * *", "* * * * *", "@every 1s").
func Parse(spec string) (Schedule, error) {
	s, err := parser.Parse(spec)
	if err != nil {
		return nil, fmt.Errorf("%w %q: %v", ErrInvalidSpec, spec, err)
	}
	return s, nil
}

// Scheduler runs named functions on schedules until its context ends.
type Scheduler struct {
	log     *zap.Logger
	mu      sync.Mutex
	entries []entry
	running bool
}

type entry struct {
	name  string
	sched Schedule
	fn    Func
}

// New returns an empty scheduler logging to log (nil: no logs).
func New(log *zap.Logger) *Scheduler {
	if log == nil {
		log = zap.NewNop()
	}
	return &Scheduler{log: log.Named("scheduler")}
}

// Add registers fn under name on spec.
func (s *Scheduler) Add(name, spec string, fn Func) error {
	sched, err := Parse(spec)
	if err != nil {
		return err
	}
	return s.AddSchedule(name, sched, fn)
}

// AddSchedule registers fn under name on a ready-made schedule.
func (s *Scheduler) AddSchedule(name string, sched Schedule, fn Func) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running {
		return ErrRunning
	}
	s.entries = append(s.entries, entry{name: name, sched: sched, fn: fn})
	return nil
}

// Run runs the schedules until ctx is done, then waits for running
// functions to return (they see ctx cancelled).
func (s *Scheduler) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.running {
		s.mu.Unlock()
		return ErrRunning
	}
	s.running = true
	entries := append([]entry(nil), s.entries...)
	s.mu.Unlock()
	defer func() { s.mu.Lock(); s.running = false; s.mu.Unlock() }()

	c := cron.New(cron.WithChain(cron.Recover(cronLogger{s.log}), cron.SkipIfStillRunning(cronLogger{s.log})))
	// A run that fails every second (the database restarting) is logged
	// when it starts failing, every minute while it does, and when it
	// works again: not once a run.
	var failing logrepeat.Log[string]
	for _, e := range entries {
		c.Schedule(e.sched, cron.FuncJob(func() {
			if ctx.Err() != nil {
				return
			}
			err := e.fn(ctx)
			switch {
			case ctx.Err() != nil:
			case err != nil:
				if since, n, ok := failing.On(e.name, time.Now()); ok {
					s.log.Warn("scheduled run failed", zap.String("name", e.name), zap.Error(err),
						zap.Time("failing_since", since), zap.Int("failed_runs", n))
				}
			default:
				if since, n, ok := failing.Off(e.name); ok {
					s.log.Info("scheduled run works again", zap.String("name", e.name),
						zap.Duration("failed_for", time.Since(since).Round(time.Second)), zap.Int("failed_runs", n))
				}
			}
		}))
	}
	c.Start()
	<-ctx.Done()
	<-c.Stop().Done()
	return nil
}

// cronLogger adapts zap to cron's logger interface.
type cronLogger struct{ l *zap.Logger }

func (c cronLogger) Info(msg string, kv ...any) { c.l.Debug(msg, zap.Any("details", kv)) }
func (c cronLogger) Error(err error, msg string, kv ...any) {
	c.l.Error(msg, zap.Error(err), zap.Any("details", kv))
}
