package worker

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
)

// DecodeArgs decodes a Sidekiq args array into dst (a pointer). If dst's
// element type implements json.Unmarshaler or is a slice/array, the whole
// array is decoded as-is; a struct is filled positionally, field by field
// in declaration order, and the count must match (trailing fields tagged
// `sidekiq:",optional"` may be absent). Numbers keep full precision when the
// field is json.Number or json.RawMessage.
func DecodeArgs(raw json.RawMessage, dst any) error {
	rv := reflect.ValueOf(dst)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return fmt.Errorf("DecodeArgs needs a non-nil pointer, got %T", dst)
	}
	if _, ok := dst.(json.Unmarshaler); ok {
		return json.Unmarshal(raw, dst)
	}
	elem := rv.Elem()
	if elem.Kind() != reflect.Struct {
		return strictUnmarshal(raw, dst)
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return fmt.Errorf("args must be a JSON array: %w", err)
	}
	fields := positionalFields(elem.Type())
	required := 0
	for i, f := range fields {
		if !f.optional {
			required = i + 1
		}
	}
	if len(items) < required || len(items) > len(fields) {
		want := fmt.Sprint(len(fields))
		if required != len(fields) {
			want = fmt.Sprintf("%d to %d", required, len(fields))
		}
		return fmt.Errorf("expected %s arguments, got %d", want, len(items))
	}
	for i, item := range items {
		f := elem.Field(fields[i].index)
		if err := strictUnmarshal(item, f.Addr().Interface()); err != nil {
			return fmt.Errorf("argument %d (%s): %w", i+1, fields[i].name, err)
		}
	}
	return nil
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
}

func positionalFields(t reflect.Type) []posField {
	var out []posField
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() || f.Tag.Get("sidekiq") == "-" {
			continue
		}
		out = append(out, posField{index: i, name: f.Name, optional: f.Tag.Get("sidekiq") == ",optional"})
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
		b, err := json.Marshal(args)
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
	return json.Marshal(vals)
}
