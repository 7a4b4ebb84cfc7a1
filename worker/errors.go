package worker

import (
	"errors"
	"fmt"
	"strings"
)

// UnknownClassError is the failure of a job whose class no worker handles.
// It takes the normal retry path, as Ruby's NameError does, so the job is
// visible in the retry and then the dead set rather than silently dropped.
type UnknownClassError struct{ Class string }

func (e *UnknownClassError) Error() string {
	return fmt.Sprintf("uninitialized constant %s (no ferry worker is registered for class %q)", e.Class, e.Class)
}

// SidekiqErrorClass is the error_class recorded for this failure.
func (e *UnknownClassError) SidekiqErrorClass() string { return "NameError" }

func isUnknownClass(err error) bool {
	var uc *UnknownClassError
	return errors.As(err, &uc)
}

// ArgsError means a job's args did not decode into the worker's args type.
type ArgsError struct {
	Class string
	Err   error
	// Fatal sends the job to the dead set at once instead of through the
	// retry set (the error matches [ErrKill]); see [FatalArgs].
	Fatal bool
}

func (e *ArgsError) Error() string { return fmt.Sprintf("%s: bad job arguments: %v", e.Class, e.Err) }
func (e *ArgsError) Unwrap() error { return e.Err }

// Is makes a fatal ArgsError match ErrKill.
func (e *ArgsError) Is(target error) bool { return e.Fatal && target == ErrKill }

// FatalArgs is implemented by [Args] types whose jobs no retry can fix
// when their args do not decode (classes whose jobs the program itself
// pushes, say): such a job goes straight to the dead set with its
// ArgumentError, where an operator sees it, instead of failing 25 more
// times. Other classes keep Sidekiq's behaviour: an ArgumentError is
// retried.
type FatalArgs interface {
	Args
	BadArgsAreFatal()
}

// SidekiqErrorClass is the error_class recorded for this failure.
func (e *ArgsError) SidekiqErrorClass() string { return "ArgumentError" }

// PanicError wraps a panic recovered from a worker.
type PanicError struct {
	Value any
	Stack []string
}

func (e *PanicError) Error() string { return fmt.Sprintf("panic: %v", e.Value) }

// SidekiqErrorClass is the error_class recorded for this failure.
func (e *PanicError) SidekiqErrorClass() string { return "Ferry::Panic" }

// ErrDiscard, returned (wrapped or not) from Work, fails the job without a
// retry or dead-set entry (like Sidekiq's :discard).
var ErrDiscard = errors.New("discard job")

// ErrKill, returned from Work, sends the job to the dead set at once.
var ErrKill = errors.New("kill job")

// ErrStopped is returned by Runtime.Run when the Runtime has already run:
// a Runtime runs once. (A stop requested through Stop, ctx or a TERM sent
// through Redis — the Web UI's Stop button — makes Run return nil.)
var ErrStopped = errors.New("worker stopped")

// errorClass returns the error_class to record: an error can name its own
// with a SidekiqErrorClass() method; otherwise the Go type name.
func errorClass(err error) string {
	var named interface{ SidekiqErrorClass() string }
	if errors.As(err, &named) {
		return named.SidekiqErrorClass()
	}
	cls := fmt.Sprintf("%T", unwrapAll(err))
	if strings.HasPrefix(cls, "*errors.") || strings.HasPrefix(cls, "*fmt.") {
		return "StandardError"
	}
	return strings.TrimPrefix(cls, "*")
}

func unwrapAll(err error) error {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err
		}
		err = u
	}
}
