package cache

// Buckets and Entries return the cache's shared words, for tests that write
// to them from outside the cache's writers.
func Buckets(c *Cache) []uint64 { return c.buckets }
func Entries(c *Cache) []uint64 { return c.entries }
func EntryWords(c *Cache) int   { return c.entryW }

// LockedWait is how long Get waits for a shard's lock at most.
const LockedWait = lockedWait

// BucketOf returns the bucket of key in c.
func BucketOf(c *Cache, key []byte) int { return c.bucketOf(c.hash(key)) }
