package bbm

// SimulateCrash makes e behave like a killed process: it records nothing more.
func SimulateCrash(e *Engine) { e.crashed.Store(true) }
