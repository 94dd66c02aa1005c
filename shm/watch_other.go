//go:build !linux

package shm

// startWatch: no pidfds here; waiters rely on their probe schedule.
func (r *Region) startWatch(id uint32, w *watch) watchStart { return watchNone }
