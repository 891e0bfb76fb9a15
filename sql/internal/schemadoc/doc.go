// Package schemadoc keeps sql/SCHEMA.md, the DDL of every table the sql
// module's packages create, for teams that run their own migrations. Its
// test fails when the file differs from what the packages' Schema functions
// return; `go test ./internal/schemadoc -update` rewrites it.
package schemadoc
