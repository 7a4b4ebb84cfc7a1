package queue_test

import (
	"fmt"

	"github.com/ferrymigrate/ferry/queue"
)

// A Sidekiq payload as a Ruby client wrote it: ParseJob checks it and keeps
// its bytes; the accessors read Sidekiq's fields.
func ExampleParseJob() {
	j, err := queue.ParseJob([]byte(`{"class":"BackgroundMigrationWorker","args":["CopyColumn",["events","id","id_big",1,1000]],"queue":"background_migration","jid":"b4a577edbccf1d805744efa9","retry":true,"created_at":1700000000.5}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(j.Class(), j.Queue(), j.JID())
	fmt.Println(string(j.Args()))
	_, err = queue.ParseJob([]byte(`{"class":"X","args":"not an array"}`))
	fmt.Println(err != nil)
	// Output:
	// BackgroundMigrationWorker background_migration b4a577edbccf1d805744efa9
	// ["CopyColumn",["events","id","id_big",1,1000]]
	// true
}
