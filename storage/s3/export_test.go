package s3

import "github.com/aws/aws-sdk-go-v2/service/s3"

// Client exposes the SDK client to tests that probe the server directly.
func (b *Backend) Client() *s3.Client { return b.client }

// SetPreCheckSize changes the IfAbsent pre-check threshold until the test ends.
func SetPreCheckSize(t interface{ Cleanup(func()) }, n int) {
	old := preCheckSize
	preCheckSize = n
	t.Cleanup(func() { preCheckSize = old })
}

// SetListPageSize makes every listing request ask for at most n keys until
// the test ends.
func SetListPageSize(t interface{ Cleanup(func()) }, n int32) {
	old := listPageSize
	listPageSize = n
	t.Cleanup(func() { listPageSize = old })
}
