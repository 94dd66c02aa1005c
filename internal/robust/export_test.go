//go:build linux

package robust

// TakeID is takeID, for the tests.
func TakeID() (int32, bool) { return takeID() }
