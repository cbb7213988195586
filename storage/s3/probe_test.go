package s3_test

import (
	"context"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	sdk "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/pgkeep/pgkeep/internal/s3test"
	"github.com/pgkeep/pgkeep/storage"
	"github.com/pgkeep/pgkeep/storage/s3"
)

// The s3 backend is probed at repo init; fs is not.
var _ storage.ConditionalPutProber = (*s3.Backend)(nil)

// TestProbeConditionalPut: each server honours If-None-Match: *, so the
// probe passes and leaves nothing in the bucket; through a proxy that takes
// the header off (a store that ignores it), the probe fails with the one-line
// message naming that behaviour, still leaves nothing, and never shows the
// secret key.
func TestProbeConditionalPut(t *testing.T) { eachServer(t, testProbeConditionalPut) }

func testProbeConditionalPut(t *testing.T, srv *s3test.Server) {
	ctx := context.Background()
	for _, c := range []struct {
		name string
		srv  *s3test.Server
		want string // "" = the probe passes
	}{
		{"direct", srv, ""},
		{"stripping proxy", srv.StripIfNoneMatch(t), "ignored If-None-Match: * (a second conditional put of the probe succeeded); pgkeep cannot guarantee archived WAL is never overwritten there"},
		{"proxy stripping it from multipart completions", srv.StripIfNoneMatchOnComplete(t), "ignored If-None-Match: * on CompleteMultipartUpload (a conditional multipart upload over the probe succeeded); pgkeep cannot guarantee archived WAL is never overwritten there"},
	} {
		t.Run(c.name, func(t *testing.T) {
			bucket := newBucket(t, srv)
			b := c.srv.Backend(t, bucket, "repo/one", s3.Options{})
			err := b.ProbeConditionalPut(ctx)
			t.Logf("probe: %v", err)
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("probe of a store that honours If-None-Match: %v", err)
			case c.want != "" && err == nil:
				t.Fatal("probe of a store that ignores If-None-Match passed")
			case c.want != "":
				msg := err.Error()
				prefix := "the S3 store at " + c.srv.Endpoint + " (s3://" + bucket + "/repo/one) "
				if !strings.HasPrefix(msg, prefix) || !strings.Contains(msg, c.want) || strings.Contains(msg, "\n") {
					t.Fatalf("probe error %q, want one line starting %q containing %q", msg, prefix, c.want)
				}
				if strings.Contains(msg, srv.SecretKey) || strings.Contains(msg, srv.AccessKey) {
					t.Fatalf("credentials in the probe error: %q", msg)
				}
				if c.srv.IfNoneMatchStripped.Load() == 0 {
					t.Fatal("the proxy stripped no If-None-Match header")
				}
			}
			// Nothing left behind, under the prefix or anywhere in the
			// bucket, and no pending multipart upload.
			out, lerr := b.Client().ListObjectsV2(ctx, &sdk.ListObjectsV2Input{Bucket: aws.String(bucket)})
			if lerr != nil {
				t.Fatal(lerr)
			}
			for _, o := range out.Contents {
				t.Errorf("probe left %s", aws.ToString(o.Key))
			}
			if n := pendingUploads(t, b); n != 0 {
				t.Errorf("probe left %d multipart uploads", n)
			}
		})
	}
}
