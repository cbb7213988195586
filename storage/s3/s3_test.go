package s3_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	sdk "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"github.com/pgkeep/pgkeep/internal/s3test"
	"github.com/pgkeep/pgkeep/storage"
	"github.com/pgkeep/pgkeep/storage/s3"
	"github.com/pgkeep/pgkeep/storage/storagetest"
)

var seq atomic.Int64

func newBucket(t *testing.T, srv *s3test.Server) string {
	bucket := fmt.Sprintf("bucket-%d", seq.Add(1))
	srv.CreateBucket(t, bucket)
	return bucket
}

// eachServer runs test against a fresh server of every kind (MinIO and
// versitygw), as subtests named after the kind.
func eachServer(t *testing.T, test func(t *testing.T, srv *s3test.Server)) {
	for _, k := range s3test.Kinds {
		t.Run(string(k), func(t *testing.T) { test(t, s3test.StartKind(t, k)) })
	}
}

func TestConformance(t *testing.T) { eachServer(t, testConformance) }

func testConformance(t *testing.T, srv *s3test.Server) {
	// Listings in pages of 3 keys: continuation across "directories" (the
	// posix backend of versitygw walks a directory tree) is checked too.
	s3.SetListPageSize(t, 3)
	var backends []*s3.Backend
	storagetest.Run(t, 12<<20, func(t *testing.T) storage.Backend {
		// 5 MiB parts: 12 MiB objects take the multipart path.
		b := srv.Backend(t, newBucket(t, srv), "some/prefix", s3.Options{PartSize: 5 << 20, Concurrency: 2})
		backends = append(backends, b)
		return b
	})
	// Every failed, cancelled or refused multipart put was aborted.
	for _, b := range backends {
		if n := pendingUploads(t, b); n != 0 {
			t.Errorf("%s: %d multipart uploads left pending", b, n)
		}
	}
}

func pendingUploads(t *testing.T, b *s3.Backend) int {
	t.Helper()
	bucket := strings.TrimPrefix(b.String(), "s3://")
	bucket, _, _ = strings.Cut(bucket, "/")
	out, err := b.Client().ListMultipartUploads(context.Background(), &sdk.ListMultipartUploadsInput{Bucket: aws.String(bucket)})
	if err != nil {
		t.Fatal(err)
	}
	return len(out.Uploads)
}

func TestPrefixAndString(t *testing.T) { eachServer(t, testPrefixAndString) }

func testPrefixAndString(t *testing.T, srv *s3test.Server) {
	bucket := newBucket(t, srv)
	ctx := context.Background()
	root := srv.Backend(t, bucket, "", s3.Options{})
	pre := srv.Backend(t, bucket, "/repo/one/", s3.Options{})
	if root.String() != "s3://"+bucket || pre.String() != "s3://"+bucket+"/repo/one" {
		t.Fatalf("String: %s %s", root, pre)
	}
	if err := pre.Put(ctx, "x/y", strings.NewReader("data"), storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	// A sibling prefix that starts the same is another repository.
	if err := root.Put(ctx, "repo/one-other/z", strings.NewReader("other"), storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := root.Stat(ctx, "repo/one/x/y"); err != nil {
		t.Fatalf("object not under the prefix: %v", err)
	}
	var names []string
	pre.List(ctx, "", func(o storage.ObjectInfo) error { names = append(names, o.Name); return nil })
	if strings.Join(names, " ") != "x/y" {
		t.Fatalf("list under prefix: %q", names)
	}
	for _, name := range []string{"", "/x", "a/../b", "a//b", ".tmp/x", "a\\b"} {
		if err := pre.Put(ctx, name, strings.NewReader("x"), storage.PutOptions{}); err == nil {
			t.Errorf("put %q accepted", name)
		}
	}
	if _, err := s3.New(ctx, s3.Options{}); err == nil {
		t.Fatal("New without a bucket succeeded")
	}
	missing := srv.Backend(t, "no-such-bucket", "", s3.Options{})
	if err := missing.Put(ctx, "x", strings.NewReader("x"), storage.PutOptions{}); err == nil || !strings.Contains(err.Error(), "bucket does not exist") {
		t.Fatalf("put into a missing bucket: %v", err)
	}
}

// TestServerDown: with the server gone, operations fail within the
// configured timeout, the errors never show the secret key, and everything
// works again once the server is back.
func TestServerDown(t *testing.T) { eachServer(t, testServerDown) }

func testServerDown(t *testing.T, srv *s3test.Server) {
	bucket := newBucket(t, srv)
	b := srv.Backend(t, bucket, "", s3.Options{Timeout: 3 * time.Second, MaxAttempts: 3, PartSize: 5 << 20})
	ctx := context.Background()
	if err := b.Put(ctx, "before", bytes.NewReader([]byte("x")), storage.PutOptions{IfAbsent: true}); err != nil {
		t.Fatal(err)
	}
	srv.Stop(t)
	ops := map[string]func() error{
		"put": func() error {
			return b.Put(ctx, "during", bytes.NewReader([]byte("y")), storage.PutOptions{IfAbsent: true})
		},
		"put large": func() error {
			return b.Put(ctx, "during-large", bytes.NewReader(make([]byte, 12<<20)), storage.PutOptions{IfAbsent: true})
		},
		"put overwrite": func() error {
			return b.Put(ctx, "before", bytes.NewReader([]byte("y")), storage.PutOptions{})
		},
		"get": func() error {
			_, err := b.Get(ctx, "before")
			return err
		},
		"stat": func() error {
			_, err := b.Stat(ctx, "before")
			return err
		},
		"list":   func() error { return b.List(ctx, "", func(storage.ObjectInfo) error { return nil }) },
		"delete": func() error { return b.Delete(ctx, "before") },
	}
	for name, op := range ops {
		start := time.Now()
		err := op()
		d := time.Since(start)
		t.Logf("%s with the server down: %s: %v", name, d.Round(time.Millisecond), err)
		if err == nil {
			t.Fatalf("%s succeeded with the server down", name)
		}
		if d > 10*time.Second {
			t.Errorf("%s took %s with a 3s timeout", name, d)
		}
		if strings.Contains(err.Error(), srv.SecretKey) {
			t.Fatalf("secret key in error: %v", err)
		}
		if errors.Is(err, storage.ErrNotFound) || errors.Is(err, storage.ErrExists) {
			t.Errorf("%s: %v (want a connection error, not an answer)", name, err)
		}
	}
	srv.Restart(t)
	if got := read(t, b, "before"); got != "x" {
		t.Fatalf("after restart: %q", got)
	}
	if err := b.Put(ctx, "during", bytes.NewReader([]byte("y")), storage.PutOptions{IfAbsent: true}); err != nil {
		t.Fatalf("put after restart: %v", err)
	}
	if got := read(t, b, "during"); got != "y" {
		t.Fatalf("after restart: %q", got)
	}
}

func read(t *testing.T, b storage.Backend, name string) string {
	t.Helper()
	rc, err := b.Get(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// TestConditionalWrites pins down, with the bare SDK, what the backend
// relies on each server to do with If-None-Match: *.
func TestConditionalWrites(t *testing.T) { eachServer(t, testConditionalWrites) }

func testConditionalWrites(t *testing.T, srv *s3test.Server) {
	bucket := newBucket(t, srv)
	c := srv.Backend(t, bucket, "", s3.Options{MaxAttempts: 1}).Client()
	ctx := context.Background()
	bk := aws.String(bucket)
	code := func(err error) string {
		var ae smithy.APIError
		if errors.As(err, &ae) {
			return ae.ErrorCode()
		}
		if err == nil {
			return "OK"
		}
		return err.Error()
	}
	put := func(key string, size int) error {
		in := &sdk.PutObjectInput{Bucket: bk, Key: aws.String(key), Body: bytes.NewReader(random(size)),
			ContentLength: aws.Int64(int64(size)), IfNoneMatch: aws.String("*")}
		_, err := c.PutObject(ctx, in)
		return err
	}
	multipart := func(key string, beforeComplete func()) error {
		cr, err := c.CreateMultipartUpload(ctx, &sdk.CreateMultipartUploadInput{Bucket: bk, Key: aws.String(key)})
		if err != nil {
			return err
		}
		var parts []types.CompletedPart
		for n := int32(1); n <= 2; n++ {
			out, err := c.UploadPart(ctx, &sdk.UploadPartInput{Bucket: bk, Key: aws.String(key), UploadId: cr.UploadId,
				PartNumber: aws.Int32(n), Body: bytes.NewReader(random(5 << 20)), ContentLength: aws.Int64(5 << 20)})
			if err != nil {
				return err
			}
			parts = append(parts, types.CompletedPart{ETag: out.ETag, PartNumber: aws.Int32(n)})
		}
		if beforeComplete != nil {
			beforeComplete()
		}
		_, err = c.CompleteMultipartUpload(ctx, &sdk.CompleteMultipartUploadInput{Bucket: bk, Key: aws.String(key),
			UploadId: cr.UploadId, MultipartUpload: &types.CompletedMultipartUpload{Parts: parts}, IfNoneMatch: aws.String("*")})
		if err != nil {
			c.AbortMultipartUpload(ctx, &sdk.AbortMultipartUploadInput{Bucket: bk, Key: aws.String(key), UploadId: cr.UploadId})
		}
		return err
	}
	expect := func(what string, err error, want string) {
		t.Helper()
		if got := code(err); got != want {
			t.Errorf("%s: %s, want %s", what, got, want)
		}
	}
	expect("PutObject of a new name", put("p", 100), "OK")
	expect("PutObject of a taken name", put("p", 100), "PreconditionFailed")
	expect("multipart of a new name", multipart("m", nil), "OK")
	expect("multipart of a taken name", multipart("m", nil), "PreconditionFailed")
	expect("multipart of a name taken after it began", multipart("m2", func() { expect("PutObject", put("m2", 1), "OK") }), "PreconditionFailed")

	// Racers: exactly one wins, the rest get 412.
	for _, kind := range []string{"PutObject", "multipart"} {
		var wg sync.WaitGroup
		res := make([]string, 8)
		for i := range res {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if kind == "PutObject" {
					res[i] = code(put("race-"+kind, 256<<10))
				} else {
					res[i] = code(multipart("race-"+kind, nil))
				}
			}()
		}
		wg.Wait()
		ok, refused := 0, 0
		for _, r := range res {
			switch r {
			case "OK":
				ok++
			case "PreconditionFailed":
				refused++
			}
		}
		if ok != 1 || refused != len(res)-1 {
			t.Errorf("%d racing conditional %s: %v", len(res), kind, res)
		}
	}

	// Not asserted, only shown: a large conditional PutObject on a taken
	// name often gets "connection reset" instead of the 412 (MinIO answers
	// before reading the body and closes the connection). Put's pre-check
	// and its Stat fallback exist for this.
	resets := 0
	for range 5 {
		if err := put("p", 16<<20); code(err) != "PreconditionFailed" {
			resets++
		}
	}
	t.Logf("16 MiB conditional PutObject on a taken name: %d of 5 did not see the 412", resets)
}

// TestIfAbsentLargeExisting: a large IfAbsent put on a taken name is refused
// quickly, without uploading, and leaves no pending upload.
func TestIfAbsentLargeExisting(t *testing.T) { eachServer(t, testIfAbsentLargeExisting) }

func testIfAbsentLargeExisting(t *testing.T, srv *s3test.Server) {
	b := srv.Backend(t, newBucket(t, srv), "", s3.Options{PartSize: 5 << 20})
	ctx := context.Background()
	if err := b.Put(ctx, "seg", bytes.NewReader(random(16<<20)), storage.PutOptions{IfAbsent: true}); err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{4 << 20, 16 << 20} {
		if err := b.Put(ctx, "seg", bytes.NewReader(random(size)), storage.PutOptions{IfAbsent: true}); !errors.Is(err, storage.ErrExists) {
			t.Fatalf("%d bytes: %v", size, err)
		}
	}
	if n := pendingUploads(t, b); n != 0 {
		t.Fatalf("%d pending uploads", n)
	}
}

// TestPartBoundaries: an object of exactly one part is one PutObject, one of
// exactly two parts a two-part upload (no empty third part), checked by the
// ETag S3 gives multipart objects ("<md5 of md5s>-<parts>").
func TestPartBoundaries(t *testing.T) { eachServer(t, testPartBoundaries) }

func testPartBoundaries(t *testing.T, srv *s3test.Server) {
	bucket := newBucket(t, srv)
	const part = 5 << 20
	b := srv.Backend(t, bucket, "", s3.Options{PartSize: part, Concurrency: 1})
	ctx := context.Background()
	for _, c := range []struct {
		size  int
		parts string
	}{{part - 1, ""}, {part, ""}, {part + 1, "-2"}, {2 * part, "-2"}, {2*part + 1, "-3"}} {
		name := fmt.Sprintf("obj-%d", c.size)
		data := random(c.size)
		if err := b.Put(ctx, name, bytes.NewReader(data), storage.PutOptions{IfAbsent: true}); err != nil {
			t.Fatal(err)
		}
		if read(t, b, name) != string(data) {
			t.Fatalf("%d bytes: content differs", c.size)
		}
		out, err := b.Client().HeadObject(ctx, &sdk.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(name)})
		if err != nil {
			t.Fatal(err)
		}
		etag := strings.Trim(aws.ToString(out.ETag), `"`)
		_, suffix, _ := strings.Cut(etag, "-")
		if suffix != strings.TrimPrefix(c.parts, "-") {
			t.Errorf("%d bytes: ETag %s, want parts %q", c.size, etag, c.parts)
		}
	}
}

// TestIfAbsentLostAnswer: without the pre-check, MinIO's early 412 on a large
// body mostly arrives as a connection reset; Put still reports ErrExists.
func TestIfAbsentLostAnswer(t *testing.T) { eachServer(t, testIfAbsentLostAnswer) }

func testIfAbsentLostAnswer(t *testing.T, srv *s3test.Server) {
	b := srv.Backend(t, newBucket(t, srv), "", s3.Options{PartSize: 32 << 20})
	s3.SetPreCheckSize(t, 1<<40)
	ctx := context.Background()
	orig := random(16 << 20)
	if err := b.Put(ctx, "seg", bytes.NewReader(orig), storage.PutOptions{IfAbsent: true}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := b.Put(ctx, "seg", bytes.NewReader(random(16<<20)), storage.PutOptions{IfAbsent: true}); !errors.Is(err, storage.ErrExists) {
			t.Fatalf("IfAbsent put on a taken name: %v", err)
		}
	}
	if read(t, b, "seg") != string(orig) {
		t.Fatal("object changed")
	}
}

func random(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// More concurrent multipart puts than the backend has part buffers (its
// budget is Concurrency+1 across all puts), some of them cancelled or
// failing midway: every other put completes with the right content, and
// no buffer is leaked (puts after them still run).
func TestPartBudgetSharedByConcurrentPuts(t *testing.T) {
	eachServer(t, testPartBudgetSharedByConcurrentPuts)
}

func testPartBudgetSharedByConcurrentPuts(t *testing.T, srv *s3test.Server) {
	b := srv.Backend(t, newBucket(t, srv), "", s3.Options{PartSize: 5 << 20, Concurrency: 1})
	data := make([]byte, 12<<20)
	rand.Read(data)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for round := 0; round < 2; round++ {
		var wg sync.WaitGroup
		errs := make([]error, 6)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var r io.Reader = bytes.NewReader(data)
				pctx := ctx
				if i == 2 {
					// Cancelled midway through its second part.
					c, stop := context.WithCancel(ctx)
					defer stop()
					r = &cancelAfter{r: r, n: 7 << 20, cancel: stop}
					pctx = c
				}
				if i == 4 {
					r = io.MultiReader(bytes.NewReader(data[:6<<20]), errReader{})
				}
				errs[i] = b.Put(pctx, fmt.Sprintf("r%d/obj-%d", round, i), r, storage.PutOptions{})
			}()
		}
		wg.Wait()
		for i, err := range errs {
			switch i {
			case 2, 4:
				if err == nil {
					t.Errorf("round %d put %d: succeeded, want an error", round, i)
				}
			default:
				if err != nil {
					t.Fatalf("round %d put %d: %v", round, i, err)
				}
				rc, err := b.Get(ctx, fmt.Sprintf("r%d/obj-%d", round, i))
				if err != nil {
					t.Fatal(err)
				}
				got, _ := io.ReadAll(rc)
				rc.Close()
				if !bytes.Equal(got, data) {
					t.Errorf("round %d put %d: content differs", round, i)
				}
			}
		}
	}
}

// cancelAfter cancels a context once n bytes have been read.
type cancelAfter struct {
	r      io.Reader
	n      int
	cancel func()
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	k, err := c.r.Read(p)
	if c.n -= k; c.n <= 0 {
		c.cancel()
	}
	return k, err
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("source broke") }
