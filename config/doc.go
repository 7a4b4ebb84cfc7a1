// Package config is the only place ferry reads its environment. It merges,
// in rising priority, defaults, an optional YAML file, environment variables
// and command-line flags, and validates the result once, with errors that
// name the field.
package config
