package pgnotify

import "database/sql/driver"

var errBadConn = driver.ErrBadConn
