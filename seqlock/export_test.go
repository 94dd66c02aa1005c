package seqlock

// SetReadHook sets the function a waiting reader calls before it tries to
// recover the writer (nil: none).
func SetReadHook(f func()) {
	if f == nil {
		readHook.Store(nil)
		return
	}
	readHook.Store(&f)
}
