package sidekiq

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Job is a Sidekiq job payload. It keeps every key of the original JSON
// object, in order, with its value as raw bytes, so that re-serialising a job
// (for a retry or dead entry) preserves unknown keys such as cattr, locale or
// bid, and integers of any size in args (sidekiq-protocol.md §8.2-8.3).
type Job struct {
	raw    []byte  // exact bytes as read from Redis; nil for a new job
	fields []field // in order; a payload has about ten, so a slice beats a map
	// rawKeys holds, by field index, the original quoted bytes of keys whose
	// JSON form would not round-trip (escapes, invalid UTF-8). Rare, so it
	// stays nil for ordinary payloads.
	rawKeys map[int][]byte
}

type field struct {
	key string
	val json.RawMessage
}

// ErrInvalidJob reports a payload that is not a usable Sidekiq job.
var ErrInvalidJob = errors.New("invalid job payload")

// ParseJob decodes a payload and remembers its exact bytes. The job keeps
// references into data, so data must not be modified afterwards.
func ParseJob(data []byte) (*Job, error) {
	j, err := scanJob(data)
	if err != nil {
		return nil, err
	}
	if err := j.validate(); err != nil {
		return nil, err
	}
	return j, nil
}

// scanJob reads the fields of a JSON object, whether or not they make a job.
func scanJob(data []byte) (*Job, error) {
	if !json.Valid(data) {
		var v any
		err := json.Unmarshal(data, &v)
		if err == nil {
			err = errors.New("not valid JSON")
		}
		return nil, fmt.Errorf("%w: %v", ErrInvalidJob, err)
	}
	i := skipSpace(data, 0)
	if data[i] != '{' {
		return nil, fmt.Errorf("%w: not a JSON object", ErrInvalidJob)
	}
	j := &Job{raw: data, fields: make([]field, 0, 10)}
	// data is valid JSON, so a plain scan of the top-level object suffices.
	i = skipSpace(data, i+1)
	for data[i] != '}' {
		if data[i] == ',' {
			i = skipSpace(data, i+1)
		}
		i0, kend := i, stringEnd(data, i)
		k, err := unquote(data[i:kend])
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidJob, err)
		}
		i = skipSpace(data, skipSpace(data, kend)+1) // past ':'
		vend := valueEnd(data, i)
		before := len(j.fields)
		j.Set(k, json.RawMessage(data[i:vend:vend]))
		if len(j.fields) > before && needsRawKey(data[i0:kend]) {
			if j.rawKeys == nil {
				j.rawKeys = map[int][]byte{}
			}
			j.rawKeys[before] = data[i0:kend:kend]
		}
		i = skipSpace(data, vend)
	}
	return j, nil
}

func skipSpace(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// stringEnd returns the index just past the JSON string starting at b[i].
func stringEnd(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return i
}

// valueEnd returns the index just past the JSON value starting at b[i].
func valueEnd(b []byte, i int) int {
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				i = stringEnd(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
		}
		return i
	}
	for ; i < len(b); i++ {
		switch b[i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			return i
		}
	}
	return i
}

// unquote decodes a JSON string literal, without allocating beyond the
// result when it has no escapes.
func unquote(q []byte) (string, error) {
	if len(q) >= 2 && bytes.IndexByte(q, '\\') < 0 {
		if k := commonKey(q[1 : len(q)-1]); k != "" {
			return k, nil
		}
		return string(q[1 : len(q)-1]), nil
	}
	var s string
	err := json.Unmarshal(q, &s)
	return s, err
}

func (j *Job) validate() error {
	if j.Class() == "" {
		return fmt.Errorf("%w: \"class\" must be a non-empty string", ErrInvalidJob)
	}
	a := bytes.TrimSpace(j.Get("args"))
	if len(a) == 0 || a[0] != '[' {
		return fmt.Errorf("%w: \"args\" must be an array", ErrInvalidJob)
	}
	return nil
}

// NewJob builds a job for class with args (a JSON array) in queue.
func NewJob(class string, args json.RawMessage, queue string) *Job {
	j := &Job{fields: make([]field, 0, 10)}
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
func (j *Job) Get(key string) json.RawMessage {
	if i := j.index(key); i >= 0 {
		return j.fields[i].val
	}
	return nil
}

func (j *Job) index(key string) int {
	for i := range j.fields {
		if j.fields[i].key == key {
			return i
		}
	}
	return -1
}

// Has reports whether key is present.
func (j *Job) Has(key string) bool { return j.index(key) >= 0 }

// Set sets key to a raw JSON value, appending new keys at the end.
func (j *Job) Set(key string, v json.RawMessage) {
	if i := j.index(key); i >= 0 {
		j.fields[i].val = v
		return
	}
	j.fields = append(j.fields, field{key: key, val: v})
}

// SetString sets key to a JSON string.
func (j *Job) SetString(key, s string) { j.Set(key, marshalString(s)) }

// SetInt sets key to a JSON integer.
func (j *Job) SetInt(key string, n int64) { j.Set(key, json.RawMessage(strconv.FormatInt(n, 10))) }

// SetTime sets key to float epoch seconds with a fractional part.
func (j *Job) SetTime(key string, t float64) { j.Set(key, json.RawMessage(formatFloatTime(t))) }

// Delete removes key.
func (j *Job) Delete(key string) {
	i := j.index(key)
	if i < 0 {
		return
	}
	j.fields = append(j.fields[:i:i], j.fields[i+1:]...)
	if j.rawKeys != nil {
		shifted := make(map[int][]byte, len(j.rawKeys))
		for k, v := range j.rawKeys {
			switch {
			case k < i:
				shifted[k] = v
			case k > i:
				shifted[k-1] = v
			}
		}
		j.rawKeys = shifted
	}
}

// Clone returns a deep copy that has no original bytes.
func (j *Job) Clone() *Job {
	c := &Job{fields: make([]field, len(j.fields), len(j.fields)+4)}
	copy(c.fields, j.fields)
	if j.rawKeys != nil {
		c.rawKeys = make(map[int][]byte, len(j.rawKeys))
		for k, v := range j.rawKeys {
			c.rawKeys[k] = v
		}
	}
	return c
}

// Encode serialises the job, keys in their original order.
func (j *Job) Encode() []byte {
	var b bytes.Buffer
	b.Grow(len(j.raw) + 64*len(j.fields))
	b.WriteByte('{')
	for i, f := range j.fields {
		if i > 0 {
			b.WriteByte(',')
		}
		if rk, ok := j.rawKeys[i]; ok {
			b.Write(rk)
		} else {
			b.Write(marshalString(f.key))
		}
		b.WriteByte(':')
		b.Write(f.val)
	}
	b.WriteByte('}')
	return b.Bytes()
}

// String accessors; a missing or non-string value reads as "".
func (j *Job) str(key string) string {
	v := j.Get(key)
	if len(v) == 0 || v[0] != '"' {
		return ""
	}
	s, err := unquote(v)
	if err != nil {
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
func (j *Job) Args() json.RawMessage { return j.Get("args") }

// Time reads a timestamp key by its JSON type (see [ParseTimestamp]): 8.x
// integer milliseconds or 6.4/7.x float seconds.
func (j *Job) Time(key string) (time.Time, bool) { return ParseTimestamp(j.Get(key)) }

// Float reads a numeric key; ok is false when missing or not a number.
// Timestamps are read with [Job.Time], which knows their units.
func (j *Job) Float(key string) (float64, bool) {
	v := j.Get(key)
	if len(v) == 0 {
		return 0, false
	}
	f, err := strconv.ParseFloat(string(v), 64)
	return f, err == nil
}

// Int reads an integer key.
func (j *Job) Int(key string) (int64, bool) {
	v := j.Get(key)
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
	v := bytes.TrimSpace(j.Get("retry"))
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
	v := bytes.TrimSpace(j.Get(key))
	return len(v) > 0 && string(v) != "false" && string(v) != "null"
}

func marshalString(s string) json.RawMessage {
	if plainString(s) {
		out := make([]byte, 0, len(s)+2)
		out = append(out, '"')
		out = append(out, s...)
		return append(out, '"')
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // Ruby does not escape <, >, &; keep bytes comparable
	_ = enc.Encode(s)
	out := b.Bytes()
	return out[:len(out)-1] // drop the encoder's newline
}

// plainString reports whether s encodes to JSON as itself between quotes.
func plainString(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == '"' || c == '\\' || c >= 0x80 {
			return false
		}
	}
	return true
}

// ArgsItems splits the args array into its elements, which share memory
// with the payload. A parsed job's payload was validated by ParseJob, so
// this needs no second pass over the JSON.
func (j *Job) ArgsItems() ([]json.RawMessage, error) {
	a := j.Get("args")
	if j.raw == nil && !json.Valid(a) {
		return nil, fmt.Errorf("%w: \"args\" is not valid JSON", ErrInvalidJob)
	}
	i := skipSpace(a, 0)
	if i >= len(a) || a[i] != '[' {
		return nil, fmt.Errorf("%w: \"args\" must be an array", ErrInvalidJob)
	}
	items := make([]json.RawMessage, 0, 4)
	for i = skipSpace(a, i+1); i < len(a) && a[i] != ']'; i = skipSpace(a, i) {
		if a[i] == ',' {
			i = skipSpace(a, i+1)
		}
		end := valueEnd(a, i)
		items = append(items, json.RawMessage(a[i:end:end]))
		i = end
	}
	return items, nil
}

// commonKey returns Sidekiq's usual payload keys as constants, so parsing a
// job allocates no key strings (the switch on string(b) does not allocate).
func commonKey(b []byte) string {
	switch string(b) {
	case "class":
		return "class"
	case "args":
		return "args"
	case "jid":
		return "jid"
	case "queue":
		return "queue"
	case "retry":
		return "retry"
	case "created_at":
		return "created_at"
	case "enqueued_at":
		return "enqueued_at"
	case "retry_count":
		return "retry_count"
	case "failed_at":
		return "failed_at"
	case "retried_at":
		return "retried_at"
	case "error_message":
		return "error_message"
	case "error_class":
		return "error_class"
	case "backtrace":
		return "backtrace"
	case "tags":
		return "tags"
	case "wrapped":
		return "wrapped"
	}
	return ""
}

// needsRawKey reports whether a quoted key might not survive decoding and
// re-encoding byte for byte.
func needsRawKey(q []byte) bool {
	for _, c := range q {
		if c == '\\' || c >= 0x80 || c < 0x20 {
			return true
		}
	}
	return false
}
