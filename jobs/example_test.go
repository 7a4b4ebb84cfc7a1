package jobs_test

import (
	"fmt"

	"github.com/ferrymigrate/ferry/jobs"
	"github.com/ferrymigrate/ferry/worker"
)

// Ferry::Noop does nothing; it is there to smoke-test a deployment:
// `ferry enqueue Ferry::Noop '[]'`.
func ExampleAddNoop() {
	reg := worker.NewRegistry()
	jobs.AddNoop(reg)
	fmt.Println(reg.Kinds())
	// Output: [Ferry::Noop]
}
