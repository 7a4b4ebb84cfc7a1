package batched

import (
	"errors"
	"fmt"
	"strconv"
)

// Sentinel errors. Errors returned by the engine wrap them with %w; match
// them with errors.Is. ErrInvalid* and ErrUnknownClass are bad input
// (the CLI exits 2 on them).
var (
	// ErrClosed: the engine was closed and runs nothing more.
	ErrClosed           = errors.New("bbm: engine closed")
	ErrUnknownClass     = errors.New("unknown batched migration class")
	ErrInvalidArgs      = errors.New("invalid job arguments")
	ErrInvalidIdent     = errors.New("invalid identifier")
	ErrInvalidOption    = errors.New("invalid option")
	ErrTableNotFound    = errors.New("table not found")
	ErrColumnNotFound   = errors.New("column not found")
	ErrNotFound         = errors.New("batched background migration not found")
	ErrInvalidState     = errors.New("invalid migration state")
	ErrFailedToFinalize = errors.New("batched migration could not be completed")
)

// IsBadInput reports whether err is the caller's fault (exit code 2).
func IsBadInput(err error) bool {
	for _, e := range []error{ErrUnknownClass, ErrInvalidArgs, ErrInvalidIdent, ErrInvalidOption, ErrTableNotFound, ErrColumnNotFound} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// ArgCountError is GitLab's arity error at queue time.
type ArgCountError struct {
	Class         string
	Given, Wanted int
}

func (e *ArgCountError) Error() string {
	return fmt.Sprintf("Wrong number of job arguments for %s (given %d, expected %d)", e.Class, e.Given, e.Wanted)
}

// Is makes ArgCountError match ErrInvalidArgs.
func (e *ArgCountError) Is(target error) bool { return target == ErrInvalidArgs }

// StateError reports an operation not allowed in the migration's status.
type StateError struct {
	ID int64
	// Ref is the id as the commands take it (ci_3); "" prints ID.
	Ref    string
	Status Status
	Op     string
	Msg    string
}

func (e *StateError) Error() string {
	if e.Msg != "" {
		return e.Msg
	}
	ref := e.Ref
	if ref == "" {
		ref = strconv.FormatInt(e.ID, 10)
	}
	return fmt.Sprintf("migration %s is %s; cannot %s", ref, e.Status, e.Op)
}

// Is makes StateError match ErrInvalidState.
func (e *StateError) Is(target error) bool { return target == ErrInvalidState }

// BadArgsAreFatal sends an execution job whose args do not decode straight
// to the dead set ([worker.FatalArgs]): only ferry pushes these jobs, so
// such a job was written by hand or by something broken, and retrying it
// 25 times cannot fix it.
func (ExecutionArgs) BadArgsAreFatal() {}
