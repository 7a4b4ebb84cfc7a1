// Package batched is the API for writing your own batched background
// migration classes (GitLab's model: a table walked in batches of ids, each
// batch in sub-batches). A class says what to do with the rows of one
// sub-batch; ferry's engine does the rest (claiming batches across workers,
// pacing, retries, progress).
//
// Register classes in the process's registry (process.Registries.BBM, or
// cli.Options.Register in your own main) under their GitLab name; queue
// them with `ferry bbm queue CLASS TABLE COLUMN ARGS_JSON`.
package batched
