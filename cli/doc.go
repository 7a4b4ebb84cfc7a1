// Package cli is ferry's command line. cmd/ferry is a thin main around
// [Main]; an application that registers its own job or migration classes
// builds its own main the same way, passing [Options].
package cli
