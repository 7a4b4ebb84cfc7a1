package worker

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sync"

	"github.com/ferrymigrate/ferry/internal/sidekiq"
)

// DecodeArgs decodes a Sidekiq args array into dst (a pointer). If dst's
// element type implements json.Unmarshaler or is a slice/array, the whole
// array is decoded as-is; a struct is filled positionally, field by field
// in declaration order, and the count must match (trailing fields tagged
// `sidekiq:",optional"` may be absent). Numbers keep full precision when the
// field is json.Number or json.RawMessage.
func DecodeArgs(raw json.RawMessage, dst any) error {
	return decodeArgs(raw, nil, dst)
}

// decodeArgs decodes raw, or the args of p when p is not nil (already
// validated, so they are split without a second pass over the JSON).
func decodeArgs(raw json.RawMessage, p *sidekiq.Job, dst any) error {
	split := func() ([]json.RawMessage, error) {
		if p != nil {
			return p.ArgsItems()
		}
		return splitArray(raw)
	}
	if p != nil {
		raw = p.Args()
	}
	rv := reflect.ValueOf(dst)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return fmt.Errorf("DecodeArgs needs a non-nil pointer, got %T", dst)
	}
	if _, ok := dst.(json.Unmarshaler); ok {
		return json.Unmarshal(raw, dst)
	}
	elem := rv.Elem()
	plan := planFor(elem.Type())
	switch plan.kind {
	case planRawSlice:
		// []json.RawMessage (or a named type of it): split without reflection
		// over the values, as it is the common "anything" args type.
		items, err := split()
		if err != nil {
			return err
		}
		elem.Set(reflect.ValueOf(items).Convert(elem.Type()))
		return nil
	case planPlain:
		return json.Unmarshal(raw, dst)
	case planStrict:
		return strictUnmarshal(raw, dst)
	}
	items, err := split()
	if err != nil {
		return err
	}
	fields := plan.fields
	if len(items) < plan.required || len(items) > len(fields) {
		want := fmt.Sprint(len(fields))
		if plan.required != len(fields) {
			want = fmt.Sprintf("%d to %d", plan.required, len(fields))
		}
		return fmt.Errorf("expected %s arguments, got %d", want, len(items))
	}
	for i, item := range items {
		f := elem.Field(fields[i].index)
		if isNull(item) && !fields[i].optional && scalarKind(f.Kind()) {
			return fmt.Errorf("argument %d (%s): must be %s, got null", i+1, fields[i].name, kindName(f.Type()))
		}
		var err error
		if fields[i].strict {
			err = strictUnmarshal(item, f.Addr().Interface())
		} else {
			err = json.Unmarshal(item, f.Addr().Interface())
		}
		if err != nil {
			return fmt.Errorf("argument %d (%s): %w", i+1, fields[i].name, plainJSONError(err, item))
		}
	}
	return nil
}

// plainJSONError rewords encoding/json's type errors ("cannot unmarshal
// string into Go value of type int64") in the terms of the job's JSON, for
// an operator who never saw the Go type; the original stays wrapped.
func plainJSONError(err error, item json.RawMessage) error {
	var te *json.UnmarshalTypeError
	if !errors.As(err, &te) || te.Type == nil {
		return err
	}
	return &argError{msg: fmt.Sprintf("must be %s, got %.40s", kindName(te.Type), item), err: err}
}

type argError struct {
	msg string
	err error
}

func (e *argError) Error() string { return e.msg }
func (e *argError) Unwrap() error { return e.err }

func isNull(item json.RawMessage) bool { return string(bytes.TrimSpace(item)) == "null" }

// scalarKind: JSON null leaves such a field at its zero value without an
// error, which for a table name or an id range is never what the job meant.
func scalarKind(k reflect.Kind) bool {
	switch k {
	case reflect.String, reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
		return true
	}
	return false
}

// kindName says what JSON a Go type takes: "an integer", "a string"...
func kindName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return fmt.Sprintf("an integer (%d-bit)", t.Bits())
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return fmt.Sprintf("a non-negative integer (%d-bit)", t.Bits())
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Map, reflect.Struct:
		return "an object"
	case reflect.Pointer:
		return kindName(t.Elem())
	}
	return "a " + t.String()
}

type planKind int

const (
	planStruct   planKind = iota // positional fields
	planRawSlice                 // []json.RawMessage
	planPlain                    // json.Unmarshal, nothing can have unknown fields
	planStrict                   // json.Decoder with DisallowUnknownFields
)

type argsPlan struct {
	kind     planKind
	fields   []posField
	required int
}

var plans sync.Map // reflect.Type -> *argsPlan

func planFor(t reflect.Type) *argsPlan {
	if p, ok := plans.Load(t); ok {
		return p.(*argsPlan)
	}
	p := &argsPlan{}
	switch {
	case t.Kind() == reflect.Slice && t.Elem() == rawMessageType:
		p.kind = planRawSlice
	case t.Kind() != reflect.Struct:
		p.kind = planStrict
		if !hasStruct(t, map[reflect.Type]bool{}) {
			p.kind = planPlain
		}
	default:
		p.fields = positionalFields(t)
		for i, f := range p.fields {
			if !f.optional {
				p.required = i + 1
			}
		}
	}
	plans.Store(t, p)
	return p
}

var (
	rawMessageType  = reflect.TypeFor[json.RawMessage]()
	unmarshalerType = reflect.TypeFor[json.Unmarshaler]()
)

// hasStruct reports whether decoding into t may meet a struct, where
// unknown fields are rejected.
func hasStruct(t reflect.Type, seen map[reflect.Type]bool) bool {
	if seen[t] {
		return false
	}
	seen[t] = true
	if reflect.PointerTo(t).Implements(unmarshalerType) {
		return false
	}
	switch t.Kind() {
	case reflect.Struct:
		return true
	case reflect.Pointer, reflect.Slice, reflect.Array, reflect.Map:
		return hasStruct(t.Elem(), seen)
	case reflect.Interface:
		return false
	}
	return false
}

// splitArray splits a JSON array into its elements.
func splitArray(raw json.RawMessage) ([]json.RawMessage, error) {
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, fmt.Errorf("args must be a JSON array: %w", err)
	}
	return items, nil
}

func strictUnmarshal(raw json.RawMessage, dst any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	return dec.Decode(dst)
}

type posField struct {
	index    int
	name     string
	optional bool
	strict   bool // the field's type may hold structs: reject unknown fields
}

func positionalFields(t reflect.Type) []posField {
	var out []posField
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() || f.Tag.Get("sidekiq") == "-" {
			continue
		}
		out = append(out, posField{index: i, name: f.Name, optional: f.Tag.Get("sidekiq") == ",optional",
			strict: hasStruct(f.Type, map[reflect.Type]bool{})})
	}
	return out
}

func encodeArgs(args any) (json.RawMessage, error) {
	rv := reflect.ValueOf(args)
	for rv.Kind() == reflect.Pointer {
		if rv.IsNil() {
			return json.RawMessage("[]"), nil
		}
		rv = rv.Elem()
	}
	if _, ok := args.(json.Marshaler); ok || rv.Kind() != reflect.Struct {
		b, err := marshalNoEscape(args)
		if err != nil {
			return nil, err
		}
		if len(b) == 0 || b[0] != '[' {
			return nil, fmt.Errorf("args of %T must encode to a JSON array, got %s", args, b)
		}
		return b, nil
	}
	fields := positionalFields(rv.Type())
	vals := make([]any, 0, len(fields))
	for _, f := range fields {
		vals = append(vals, rv.Field(f.index).Interface())
	}
	return marshalNoEscape(vals)
}

// marshalNoEscape is json.Marshal without HTML escaping, so "<", ">" and
// "&" stay as Ruby writes them.
func marshalNoEscape(v any) (json.RawMessage, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}
