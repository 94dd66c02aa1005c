//go:build race

package shmlock_test

const raceBuild = true
