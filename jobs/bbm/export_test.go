package bbm

// SimulateCrash makes e behave like a killed process: it records nothing more.
func SimulateCrash(e *Engine) { e.crashed.Store(true) }

// UseCatalog points e's health indicators at other relations (tables of
// fabricated rows shaped like the statistics views).
func UseCatalog(e *Engine, activity, progressVacuum, replication string) {
	e.cat = catalog{activity: activity, progressVacuum: progressVacuum, replication: replication, locks: pgCatalog.locks}
}

// EvaluateAll runs the health indicators and also returns the errors of
// those that could not run.
var EvaluateAll = (*Engine).evaluate
