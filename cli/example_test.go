package cli_test

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/ferrymigrate/ferry/cli"
)

// Main is the whole command line; its exit code follows CONTRACT.md: bad
// input is 2, told before anything is pushed (here, args that are not a
// JSON array).
func ExampleMain() {
	code := cli.Main(context.Background(), []string{"enqueue", "Ferry::Noop", `{"not":"an array"}`}, os.Stdout, io.Discard, cli.Options{})
	fmt.Println("exit", code)
	// Output: exit 2
}
