// Command ferry is the ferry worker and operator CLI. See `ferry --help`.
package main

import (
	"context"
	"os"

	"github.com/ferrymigrate/ferry/cli"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	// Signals are handled by the subcommands that need them (worker, web,
	// finalize...), which stop gracefully; everything else just exits.
	os.Exit(cli.Main(context.Background(), os.Args[1:], os.Stdout, os.Stderr, cli.Options{Version: version}))
}
