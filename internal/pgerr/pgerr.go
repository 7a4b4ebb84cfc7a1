// Package pgerr keeps what pgconn's Error() leaves out of a PostgreSQL
// error: DETAIL ("Key (author_id)=(0) is duplicated."), HINT and CONTEXT.
// An operator reading a failed job's message in `bbm show`, a Sidekiq
// retry or a log needs them to know which row broke it.
package pgerr

import (
	"errors"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// Details is PostgreSQL's DETAIL, HINT and CONTEXT of pe, each as
// "LABEL: text", in that order; empty ones are left out.
func Details(pe *pgconn.PgError) [][2]string {
	var out [][2]string
	for _, f := range [][2]string{{"DETAIL", pe.Detail}, {"HINT", pe.Hint}, {"CONTEXT", pe.Where}} {
		if f[1] != "" {
			out = append(out, f)
		}
	}
	return out
}

// detailed is an error whose message carries its PostgreSQL details.
type detailed struct{ err error }

func (e *detailed) Error() string {
	var pe *pgconn.PgError
	errors.As(e.err, &pe)
	var b strings.Builder
	b.WriteString(e.err.Error())
	for _, f := range Details(pe) {
		b.WriteString("; " + f[0] + ": " + f[1])
	}
	return b.String()
}

func (e *detailed) Unwrap() error { return e.err }

// WithDetails returns err with PostgreSQL's details in its message, on one
// line, when it wraps a *pgconn.PgError that has any; other errors, and
// errors that carry them already, are returned as they are. errors.Is and
// errors.As see through it.
func WithDetails(err error) error {
	var pe *pgconn.PgError
	var d *detailed
	if err == nil || !errors.As(err, &pe) || len(Details(pe)) == 0 || errors.As(err, &d) {
		return err
	}
	return &detailed{err}
}
