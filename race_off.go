//go:build !race

package shmlock

func raceAcquire(*Mutex) {}
func raceRelease(*Mutex) {}
