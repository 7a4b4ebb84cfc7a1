package worker

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/ferrymigrate/ferry/internal/sidekiq"
)

type posArgs struct {
	ID     int64
	Name   string
	Opts   map[string]any
	Big    json.Number
	hidden int    //lint:ignore U1000 present to prove unexported fields are skipped
	Skip   int    `sidekiq:"-"`
	Note   string `sidekiq:",optional"`
	Extra  *int   `sidekiq:",optional"`
}

func (posArgs) Kind() string { return "PosJob" }

type wholeArgs struct{ Items []int }

func (w *wholeArgs) UnmarshalJSON(b []byte) error { return json.Unmarshal(b, &w.Items) }
func (wholeArgs) Kind() string                    { return "Whole" }

type inner struct {
	A int `json:"a"`
}

type strictArgs struct{ In inner }

func (strictArgs) Kind() string { return "Strict" }

func TestDecodeArgs(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		raw     string
		check   func(t *testing.T, a posArgs)
		wantErr string
	}{
		{name: "all fields", raw: `[7,"x",{"k":[1]},1180591620717411303424,"note",3]`, check: func(t *testing.T, a posArgs) {
			if a.ID != 7 || a.Name != "x" || a.Big.String() != "1180591620717411303424" || a.Note != "note" || a.Extra == nil || *a.Extra != 3 {
				t.Errorf("decoded %+v", a)
			}
		}},
		{name: "optional trailing fields absent", raw: `[7,"x",null,1]`, check: func(t *testing.T, a posArgs) {
			if a.Note != "" || a.Extra != nil || a.Opts != nil {
				t.Errorf("decoded %+v", a)
			}
		}},
		{name: "one optional present", raw: `[7,"x",{},1,"n"]`, check: func(t *testing.T, a posArgs) {
			if a.Note != "n" || a.Extra != nil {
				t.Errorf("decoded %+v", a)
			}
		}},
		{name: "too few", raw: `[7,"x"]`, wantErr: "expected 4 to 6 arguments, got 2"},
		{name: "too many", raw: `[7,"x",{},1,"n",2,3]`, wantErr: "expected 4 to 6 arguments, got 7"},
		{name: "wrong type", raw: `["7","x",{},1]`, wantErr: `argument 1 (ID): must be an integer (64-bit), got "7"`},
		{name: "null for a required scalar", raw: `[7,null,{},1]`, wantErr: "argument 2 (Name): must be a string, got null"},
		{name: "null for an optional scalar", raw: `[7,"x",{},1,null]`, check: func(t *testing.T, a posArgs) {
			if a.Note != "" {
				t.Errorf("decoded %+v", a)
			}
		}},
		{name: "int overflow", raw: `[1180591620717411303424,"x",{},1]`, wantErr: "argument 1 (ID)"},
		{name: "not an array", raw: `{"ID":1}`, wantErr: "args must be a JSON array"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var a posArgs
			err := DecodeArgs(json.RawMessage(tc.raw), &a)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, a)
		})
	}
}

func TestDecodeArgsOtherShapes(t *testing.T) {
	t.Parallel()
	var w wholeArgs
	if err := DecodeArgs(json.RawMessage(`[1,2,3]`), &w); err != nil || len(w.Items) != 3 {
		t.Errorf("Unmarshaler: %v, %v", w, err)
	}
	var raw []json.RawMessage
	if err := DecodeArgs(json.RawMessage(`[1180591620717411303424,{"a":"<&>"}]`), &raw); err != nil ||
		string(raw[0]) != "1180591620717411303424" || string(raw[1]) != `{"a":"<&>"}` {
		t.Errorf("slice: %s, %v", raw, err)
	}
	var s strictArgs
	if err := DecodeArgs(json.RawMessage(`[{"a":1,"b":2}]`), &s); err == nil || !strings.Contains(err.Error(), `unknown field "b"`) {
		t.Errorf("unknown nested field: %v", err)
	}
	if err := DecodeArgs(json.RawMessage(`[]`), s); err == nil || !strings.Contains(err.Error(), "non-nil pointer") {
		t.Errorf("non-pointer: %v", err)
	}
	var empty struct{}
	if err := DecodeArgs(json.RawMessage(`[]`), &empty); err != nil {
		t.Errorf("empty struct, empty args: %v", err)
	}
	if err := DecodeArgs(json.RawMessage(`[1]`), &empty); err == nil || err.Error() != "expected 0 arguments, got 1" {
		t.Errorf("empty struct, one arg: %v", err)
	}
}

func TestEncodeArgs(t *testing.T) {
	t.Parallel()
	three := 3
	for _, tc := range []struct {
		in   any
		want string
	}{
		{posArgs{ID: 1, Name: "<a&b>", Big: "1180591620717411303424", Note: "n", Extra: &three, Skip: 9}, `[1,"<a&b>",null,1180591620717411303424,"n",3]`},
		{&posArgs{ID: 2, Big: "0"}, `[2,"",null,0,"",null]`},
		{(*posArgs)(nil), `[]`},
		{[]any{1, "x"}, `[1,"x"]`},
		{strictArgs{In: inner{A: 1}}, `[{"a":1}]`},
	} {
		got, err := EncodeArgs(tc.in)
		if err != nil || string(got) != tc.want {
			t.Errorf("EncodeArgs(%#v) = %s, %v; want %s", tc.in, got, err, tc.want)
		}
	}
	if _, err := EncodeArgs(map[string]int{"a": 1}); err == nil {
		t.Error("a map encoded as args")
	}
	// Round trip.
	raw, _ := EncodeArgs(posArgs{ID: 5, Name: "n", Big: "12"})
	var back posArgs
	if err := DecodeArgs(raw, &back); err != nil || back.ID != 5 || back.Big != "12" {
		t.Errorf("round trip: %+v, %v", back, err)
	}
}

type emptyKind struct{}

func (emptyKind) Kind() string { return "" }

func TestRegistry(t *testing.T) {
	t.Parallel()
	r := NewRegistry()
	var got *Job[posArgs]
	AddWorker(r, WorkFunc[posArgs](func(_ context.Context, j *Job[posArgs]) error { got = j; return nil }))
	if err := AddWorkerSafely(r, WorkFunc[posArgs](func(context.Context, *Job[posArgs]) error { return nil })); err == nil ||
		!strings.Contains(err.Error(), `"PosJob" is already registered`) {
		t.Errorf("duplicate: %v", err)
	}
	if err := AddWorkerSafely(r, WorkFunc[emptyKind](func(context.Context, *Job[emptyKind]) error { return nil })); err == nil ||
		!strings.Contains(err.Error(), "empty class name") {
		t.Errorf("empty kind: %v", err)
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("AddWorker did not panic on a duplicate")
			}
		}()
		AddWorker(r, WorkFunc[posArgs](func(context.Context, *Job[posArgs]) error { return nil }))
	}()
	if !r.Has("PosJob") || r.Has("Nope") || len(r.Kinds()) != 1 {
		t.Errorf("Has/Kinds wrong: %v", r.Kinds())
	}

	p, err := sidekiq.ParseJob([]byte(`{"class":"PosJob","args":[1,"a",{},2],"jid":"j","queue":"q","retry_count":2,"enqueued_at":1700000000.5}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Perform(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	if got.Args.ID != 1 || got.JID != "j" || got.Queue != "q" || got.RetryCount != 2 || got.EnqueuedAt.UnixMilli() != 1700000000500 || got.Payload != p {
		t.Errorf("job = %+v", got)
	}

	unknown, _ := sidekiq.ParseJob([]byte(`{"class":"Nope","args":[]}`))
	var uce *UnknownClassError
	if err := r.Perform(context.Background(), unknown); !errors.As(err, &uce) || errorClass(err) != "NameError" {
		t.Errorf("unknown class: %v", err)
	}
	bad, _ := sidekiq.ParseJob([]byte(`{"class":"PosJob","args":[1]}`))
	err = r.Perform(context.Background(), bad)
	var ae *ArgsError
	if !errors.As(err, &ae) || errorClass(err) != "ArgumentError" || !strings.Contains(err.Error(), "PosJob") {
		t.Errorf("bad args: %v", err)
	}
}

type customErr struct{}

func (*customErr) Error() string { return "custom" }

func TestErrorClass(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		want string
	}{
		{errors.New("x"), "StandardError"},
		{&customErr{}, "worker.customErr"},
		{errors.Join(errors.New("a")), "StandardError"},
		{&PanicError{Value: 1}, "Ferry::Panic"},
		{&UnknownClassError{Class: "X"}, "NameError"},
		{&ArgsError{Class: "X", Err: errors.New("e")}, "ArgumentError"},
	} {
		if got := errorClass(tc.err); got != tc.want {
			t.Errorf("errorClass(%T) = %q, want %q", tc.err, got, tc.want)
		}
	}
}
