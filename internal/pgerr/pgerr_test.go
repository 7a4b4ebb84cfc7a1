package pgerr_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferrymigrate/ferry/internal/pgerr"
)

func TestWithDetails(t *testing.T) {
	pe := &pgconn.PgError{Severity: "ERROR", Code: "23505", Message: `could not create unique index "i"`,
		Detail: "Key (author_id)=(0) is duplicated.", Hint: "Remove the duplicates."}
	err := pgerr.WithDetails(fmt.Errorf("CopyColumn ids 1..10: %w", pe))
	want := `CopyColumn ids 1..10: ERROR: could not create unique index "i" (SQLSTATE 23505); DETAIL: Key (author_id)=(0) is duplicated.; HINT: Remove the duplicates.`
	if err.Error() != want {
		t.Fatalf("got  %s\nwant %s", err, want)
	}
	var got *pgconn.PgError
	if !errors.As(err, &got) || got != pe {
		t.Fatal("the PgError is not reachable through errors.As")
	}
	if again := pgerr.WithDetails(fmt.Errorf("outer: %w", err)); again.Error() != "outer: "+want {
		t.Fatalf("details added twice: %s", again)
	}
	plain := errors.New("no database here")
	if pgerr.WithDetails(plain) != plain || pgerr.WithDetails(nil) != nil {
		t.Fatal("an error without PostgreSQL details was changed")
	}
	bare := &pgconn.PgError{Severity: "ERROR", Code: "57014", Message: "canceling statement due to statement timeout"}
	if pgerr.WithDetails(bare) != error(bare) {
		t.Fatal("a PgError without details was wrapped")
	}
}
