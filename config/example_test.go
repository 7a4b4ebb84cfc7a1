package config_test

import (
	"fmt"

	"github.com/ferrymigrate/ferry/config"
)

// Validation happens once, and its errors name the field to fix.
func ExampleConfig_Validate() {
	c := config.Defaults()
	c.Worker.Concurrency = 0
	fmt.Println(c.Validate())
	// Output: config: worker.concurrency: must be between 1 and 1000, got 0
}
