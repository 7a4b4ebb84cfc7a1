package batched

import (
	"encoding/json"
	"testing"
)

// SameConfig matches as FindConfig's jsonb comparison does: spacing and
// object key order do not matter, nor the public schema.
func TestSameConfig(t *testing.T) {
	t.Parallel()
	a := MigrationConfig{Class: "C", Table: "events", Column: "id", Args: json.RawMessage(`[["id"], {"a":1,"b":2}]`)}
	b := MigrationConfig{Class: "C", Table: "public.events", Column: "id", Args: json.RawMessage(`[["id"],{"b":2,"a":1}]`)}
	if !SameConfig(a, b) {
		t.Fatal("same configuration not matched")
	}
	for _, c := range []MigrationConfig{
		{Class: "D", Table: "events", Column: "id", Args: a.Args},
		{Class: "C", Table: "other", Column: "id", Args: a.Args},
		{Class: "C", Table: "events", Column: "id", Args: json.RawMessage(`[["id"], {"a":1,"b":3}]`)},
		{Class: "C", Table: "events", Column: "id", Args: json.RawMessage(`[["id"`)},
	} {
		if SameConfig(a, c) {
			t.Errorf("%+v matched %+v", c, a)
		}
	}
}
