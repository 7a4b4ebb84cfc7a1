package web

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"go.uber.org/zap"

	"github.com/ferrymigrate/ferry/internal/batched"
)

// EngineMigrations implements [Migrations] with the batched migration
// engine (internal/batched), so the UI's actions behave exactly like the
// `ferry bbm` commands (state checks, transition log rows for mark
// finished, cursor-preserving retries).
type EngineMigrations struct {
	engine *batched.Engine
	log    *zap.Logger
	// base outlives requests: a finalize started from the UI keeps running
	// after the response, until the server stops.
	base context.Context

	mu         sync.Mutex
	finalizing map[int64]bool
	wg         sync.WaitGroup
}

var _ Migrations = (*EngineMigrations)(nil)

// NewEngineMigrations adapts e. Finalizations started from the UI run
// until base is cancelled; call Wait after cancelling to let them stop.
func NewEngineMigrations(base context.Context, e *batched.Engine, log *zap.Logger) *EngineMigrations {
	if log == nil {
		log = zap.NewNop()
	}
	return &EngineMigrations{engine: e, log: log.Named("web"), base: base, finalizing: map[int64]bool{}}
}

// engineErr maps the engine's sentinels onto the UI's, keeping both in
// the chain and the engine's operator-facing message.
func engineErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, batched.ErrNotFound):
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	case errors.Is(err, batched.ErrInvalidState):
		return &engineStateError{err}
	}
	return err
}

// engineStateError shows the engine's message and matches ErrInvalidState.
type engineStateError struct{ err error }

func (e *engineStateError) Error() string        { return e.err.Error() }
func (e *engineStateError) Unwrap() error        { return e.err }
func (e *engineStateError) Is(target error) bool { return target == ErrInvalidState }

// Pause implements [Migrations].
func (m *EngineMigrations) Pause(ctx context.Context, id int64) error {
	_, err := m.engine.Pause(ctx, id)
	return engineErr(err)
}

// Resume implements [Migrations].
func (m *EngineMigrations) Resume(ctx context.Context, id int64) error {
	_, err := m.engine.Resume(ctx, id)
	return engineErr(err)
}

// Retry implements [Migrations].
func (m *EngineMigrations) Retry(ctx context.Context, id int64) error {
	_, err := m.engine.Retry(ctx, id)
	return engineErr(err)
}

// MarkFinished implements [Migrations]; the engine writes who did it into
// the transition log of every job it closes.
func (m *EngineMigrations) MarkFinished(ctx context.Context, id int64, actor string) error {
	_, err := m.engine.MarkFinished(ctx, id, actor)
	return engineErr(err)
}

// Finalize implements [Migrations]: it checks the migration, then runs the
// engine's synchronous finalize in the background (it can take hours; an
// HTTP request cannot wait) and returns. The migration shows as
// finalizing meanwhile. If this process stops first, or the finalize
// fails, the migration goes back to the workers (active).
func (m *EngineMigrations) Finalize(ctx context.Context, id int64) error {
	info, err := m.engine.Get(ctx, id)
	if err != nil {
		return engineErr(err)
	}
	mig := info.Migration
	if mig.Status.Done() {
		return &StateError{Action: "finalize", Status: int16(mig.Status)}
	}
	m.mu.Lock()
	if m.finalizing[id] {
		m.mu.Unlock()
		return fmt.Errorf("%w: migration %d is already being finalized by this server", ErrInvalidState, id)
	}
	m.finalizing[id] = true
	m.mu.Unlock()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer func() {
			m.mu.Lock()
			delete(m.finalizing, id)
			m.mu.Unlock()
		}()
		log := m.log.With(zap.Int64("migration_id", id), zap.String("class", mig.Class))
		log.Info("finalizing batched background migration from the web UI")
		if err := m.engine.Finalize(m.base, mig); err != nil {
			log.Error("finalize from the web UI failed", zap.Error(err))
			return
		}
		log.Info("batched background migration finalized")
	}()
	return nil
}

// Close releases the engine (its database session), after Wait.
func (m *EngineMigrations) Close() { m.engine.Close() }

// Wait blocks until finalizations started from the UI have returned.
func (m *EngineMigrations) Wait() { m.wg.Wait() }
