//go:build linux && !amd64 && !arm64 && !386

package robust

// canTakeID says whether takeID is implemented here.
const canTakeID = false

// takeID is implemented for amd64, arm64 and 386; elsewhere a search for a free
// thread ID tries threads only.
func takeID() (int32, bool) { return 0, false }
