package kafka

// CursorForTest is the List cursor of partition p, offset off.
func CursorForTest(p int, off int64) string { return encodeCursor(p, off) }
