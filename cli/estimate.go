package cli

import (
	"context"

	"github.com/ferrymigrate/ferry/internal/batched"
	"github.com/ferrymigrate/ferry/internal/dbmigrate"
)

// planEstimator says, in a dry run's plan, how long each batched migration
// the upgrade queues or requires should run on this database (see
// batched.Estimator). It only reads: a dry run changes nothing.
type planEstimator struct {
	x *batched.Estimator
}

// planEstimates returns the estimator of t's database; nil (no estimate
// lines) when the database cannot be opened, which the plan reports anyway.
func (a *App) planEstimates(ctx context.Context, f *dbFlags, t dbTarget) *planEstimator {
	pool, err := a.dbPool(ctx, f, t)
	if err != nil {
		return nil
	}
	return &planEstimator{x: batched.NewEstimator(pool, bbmHealth(a))}
}

// line is the plan's estimate line for b, "" for none.
func (p *planEstimator) line(ctx context.Context, b dbmigrate.BBM) string {
	if p == nil {
		return ""
	}
	est, err := p.x.ForConfig(ctx, b.Class, b.Table, b.Column, b.Args)
	if err != nil {
		return "--   estimate: unknown: " + oneLine(err.Error()) + "\n"
	}
	return "--   estimate: " + est.Text() + "\n"
}
