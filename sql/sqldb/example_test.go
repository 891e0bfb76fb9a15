package sqldb_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/queuekit/queuekit/sql/sqldb"
)

// Open a SQLite file (PostgreSQL: a postgres:// URL) configured for
// queuekit's inbox, outbox and SQL queue, and check a table's columns.
func ExampleOpen() {
	dir, err := os.MkdirTemp("", "sqldb-example")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)

	db, dialect, err := sqldb.Open("sqlite:" + filepath.Join(dir, "app.db"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer db.Close()
	fmt.Println("dialect:", dialect)

	ctx := context.Background()
	if _, err := db.ExecContext(ctx, `CREATE TABLE orders (id TEXT PRIMARY KEY, quantity INTEGER)`); err != nil {
		fmt.Println(err)
		return
	}
	err = sqldb.CheckColumns(ctx, db, dialect, "orders", []sqldb.Column{{Name: "id", Types: []string{"text"}}, {Name: "status"}})
	fmt.Println(err)

	_, _, err = sqldb.Open("postgres://app:s3cret@db.internal:99999/app")
	fmt.Println(err)
	// Output:
	// dialect: sqlite
	// sqldb: table does not have the expected schema: table "orders": column "status" is missing
	// sqldb: open postgres://app:xxxxx@db.internal:99999/app: cannot parse `postgres://app:xxxxx@db.internal:99999/app`: invalid port
}
