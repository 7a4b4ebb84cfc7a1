package queue

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// Job is a Sidekiq job payload. It keeps every key of the original JSON
// object, in order, with its value as raw bytes, so that re-serialising a job
// (for a retry or dead entry) preserves unknown keys such as cattr, locale or
// bid, and integers of any size in args (sidekiq-protocol.md §8.2-8.3).
type Job struct {
	raw    []byte // exact bytes as read from Redis; nil for a new job
	keys   []string
	values map[string]json.RawMessage
}

// ErrInvalidJob reports a payload that is not a usable Sidekiq job.
var ErrInvalidJob = errors.New("invalid job payload")

// ParseJob decodes a payload and remembers its exact bytes.
func ParseJob(data []byte) (*Job, error) {
	j := &Job{raw: data, values: make(map[string]json.RawMessage, 12)}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidJob, err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, fmt.Errorf("%w: not a JSON object", ErrInvalidJob)
	}
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidJob, err)
		}
		k := kt.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidJob, err)
		}
		if _, dup := j.values[k]; !dup {
			j.keys = append(j.keys, k)
		}
		j.values[k] = v
	}
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidJob, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data", ErrInvalidJob)
	}
	if _, err := dec.Token(); err == nil {
		return nil, fmt.Errorf("%w: trailing data", ErrInvalidJob)
	}
	if err := j.validate(); err != nil {
		return nil, err
	}
	return j, nil
}

func (j *Job) validate() error {
	if j.Class() == "" {
		return fmt.Errorf("%w: \"class\" must be a non-empty string", ErrInvalidJob)
	}
	a := bytes.TrimSpace(j.values["args"])
	if len(a) == 0 || a[0] != '[' {
		return fmt.Errorf("%w: \"args\" must be an array", ErrInvalidJob)
	}
	return nil
}

// NewJob builds a job for class with args (a JSON array) in queue.
func NewJob(class string, args json.RawMessage, queue string) *Job {
	j := &Job{values: make(map[string]json.RawMessage, 8)}
	j.SetString("class", class)
	if len(args) == 0 {
		args = json.RawMessage("[]")
	}
	j.Set("args", args)
	j.SetString("queue", queue)
	return j
}

// Raw returns the bytes the job was read as, or its encoding for a new job.
func (j *Job) Raw() []byte {
	if j.raw == nil {
		return j.Encode()
	}
	return j.raw
}

// Get returns the raw value of key, or nil.
func (j *Job) Get(key string) json.RawMessage { return j.values[key] }

// Has reports whether key is present.
func (j *Job) Has(key string) bool { _, ok := j.values[key]; return ok }

// Set sets key to a raw JSON value, appending new keys at the end.
func (j *Job) Set(key string, v json.RawMessage) {
	if _, ok := j.values[key]; !ok {
		j.keys = append(j.keys, key)
	}
	j.values[key] = v
}

// SetString sets key to a JSON string.
func (j *Job) SetString(key, s string) { j.Set(key, marshalString(s)) }

// SetInt sets key to a JSON integer.
func (j *Job) SetInt(key string, n int64) { j.Set(key, json.RawMessage(strconv.FormatInt(n, 10))) }

// SetTime sets key to float epoch seconds with a fractional part.
func (j *Job) SetTime(key string, t float64) { j.Set(key, json.RawMessage(formatFloatTime(t))) }

// Delete removes key.
func (j *Job) Delete(key string) {
	if _, ok := j.values[key]; !ok {
		return
	}
	delete(j.values, key)
	for i, k := range j.keys {
		if k == key {
			j.keys = append(j.keys[:i:i], j.keys[i+1:]...)
			break
		}
	}
}

// Clone returns a deep copy that has no original bytes.
func (j *Job) Clone() *Job {
	c := &Job{keys: append([]string(nil), j.keys...), values: make(map[string]json.RawMessage, len(j.values)+4)}
	for k, v := range j.values {
		c.values[k] = v
	}
	return c
}

// Encode serialises the job, keys in their original order.
func (j *Job) Encode() []byte {
	var b bytes.Buffer
	b.Grow(64 * len(j.keys))
	b.WriteByte('{')
	for i, k := range j.keys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(marshalString(k))
		b.WriteByte(':')
		b.Write(j.values[k])
	}
	b.WriteByte('}')
	return b.Bytes()
}

// String accessors; a missing or non-string value reads as "".
func (j *Job) str(key string) string {
	v := j.values[key]
	if len(v) == 0 || v[0] != '"' {
		return ""
	}
	var s string
	if json.Unmarshal(v, &s) != nil {
		return ""
	}
	return s
}

// Class is the Sidekiq class name.
func (j *Job) Class() string { return j.str("class") }

// DisplayClass is what the Sidekiq Web UI shows: display_class, wrapped, or class.
func (j *Job) DisplayClass() string {
	if s := j.str("display_class"); s != "" {
		return s
	}
	if s := j.str("wrapped"); s != "" {
		return s
	}
	return j.Class()
}

// JID is the job id.
func (j *Job) JID() string { return j.str("jid") }

// Queue is the job's queue name ("default" when missing, as in Sidekiq).
func (j *Job) Queue() string {
	if q := j.str("queue"); q != "" {
		return q
	}
	return "default"
}

// Args returns the raw args array.
func (j *Job) Args() json.RawMessage { return j.values["args"] }

// Float reads a numeric key (timestamps); ok is false when missing or not a number.
func (j *Job) Float(key string) (float64, bool) {
	v := j.values[key]
	if len(v) == 0 {
		return 0, false
	}
	f, err := strconv.ParseFloat(string(v), 64)
	return f, err == nil
}

// Int reads an integer key.
func (j *Job) Int(key string) (int64, bool) {
	v := j.values[key]
	if len(v) == 0 {
		return 0, false
	}
	n, err := strconv.ParseInt(string(v), 10, 64)
	return n, err == nil
}

// RetryPolicy is the decoded "retry" option.
type RetryPolicy struct {
	Enabled bool // false for retry:false
	Max     int  // max retries; -1 means "use the default"
}

// Retry decodes "retry": true, false or an integer. Missing means def.
func (j *Job) Retry(def RetryPolicy) RetryPolicy {
	v := bytes.TrimSpace(j.values["retry"])
	switch {
	case len(v) == 0 || string(v) == "null":
		return def
	case string(v) == "true":
		return RetryPolicy{Enabled: true, Max: -1}
	case string(v) == "false":
		return RetryPolicy{}
	}
	if n, err := strconv.ParseInt(string(v), 10, 64); err == nil {
		if n <= 0 {
			return RetryPolicy{Enabled: true, Max: 0}
		}
		return RetryPolicy{Enabled: true, Max: int(n)}
	}
	return def
}

// Truthy reports whether key is present and not false/null (e.g. "backtrace", "dead").
func (j *Job) Truthy(key string) bool {
	v := bytes.TrimSpace(j.values[key])
	return len(v) > 0 && string(v) != "false" && string(v) != "null"
}

func marshalString(s string) json.RawMessage {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // Ruby does not escape <, >, &; keep bytes comparable
	_ = enc.Encode(s)
	out := b.Bytes()
	return out[:len(out)-1] // drop the encoder's newline
}
