package dbmigrate_test

import (
	"fmt"
	"testing/fstest"

	"github.com/ferrymigrate/ferry/internal/dbmigrate"
)

// Load reads a directory of migration files; versions sort numerically and
// directives are parsed up front, so typos fail before anything runs.
// (dbmigrate.New(pool, migs, opts).Migrate(ctx, "") then applies them.)
func Example() {
	migs, err := dbmigrate.Load(fstest.MapFS{
		"20240102000000_index_users.up.sql": {Data: []byte(
			"-- ferry:no-transaction\nCREATE INDEX CONCURRENTLY users_email ON users (email);\n")},
		"20240102000000_index_users.down.sql": {Data: []byte("DROP INDEX IF EXISTS users_email;\n")},
		"20240103000000_drop_old_id.up.sql": {Data: []byte(
			"-- ferry:require-bbm CopyColumnUsingBackgroundMigrationJob users id [[\"id\"],[\"id_big\"]]\n" +
				"ALTER TABLE users DROP COLUMN old_id;\n")},
		"9_create_users.up.sql": {Data: []byte("CREATE TABLE users (id bigserial PRIMARY KEY, email text);\n")},
	})
	if err != nil {
		panic(err)
	}
	for _, m := range migs {
		fmt.Printf("%s no-transaction=%v down=%v\n", m.ID(), m.Up.NoTransaction, m.DownFile != "")
		for _, b := range m.Up.Require {
			fmt.Println("  requires:", b.FinalizeCommand())
		}
	}
	// Output:
	// 9_create_users no-transaction=false down=false
	// 20240102000000_index_users no-transaction=true down=true
	// 20240103000000_drop_old_id no-transaction=false down=false
	//   requires: ferry bbm finalize CopyColumnUsingBackgroundMigrationJob users id '[["id"],["id_big"]]'
}
