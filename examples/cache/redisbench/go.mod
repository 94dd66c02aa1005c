module github.com/shmlock/shmlock/examples/cache/redisbench

go 1.26.0

require (
	github.com/redis/go-redis/v9 v9.23.0
	github.com/shmlock/shmlock v0.0.0
)

require (
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/edsrzf/mmap-go v1.2.0 // indirect
	go.uber.org/atomic v1.12.0 // indirect
	golang.org/x/sys v0.48.0 // indirect
)

replace github.com/shmlock/shmlock => ../../..
