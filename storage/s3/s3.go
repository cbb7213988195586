// Package s3 stores a repository in an S3 bucket (AWS, MinIO or any
// S3-compatible store) through aws-sdk-go-v2.
//
// Atomicity: an object is written by a single PutObject, or by a multipart
// upload that is completed only after every part succeeded (and aborted
// otherwise), so an interrupted writer leaves nothing visible under the
// name. Create-if-absent sends If-None-Match: * on PutObject and on
// CompleteMultipartUpload; the server decides atomically, so of racing
// writers exactly one wins.
package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"github.com/pgkeep/pgkeep/storage"
)

const (
	minPartSize = 5 << 20 // S3's minimum for every part but the last
	maxParts    = 10000   // S3's maximum number of parts
)

// IfAbsent puts of at least this many bytes first ask whether the name is
// taken: see Put. (A variable for tests.)
var preCheckSize = 1 << 20

// listPageSize is the MaxKeys of each listing request; 0 leaves it to the
// server (1000 on AWS). (A variable for tests: small pages make every
// listing page across "directories".)
var listPageSize int32

// Options configures the backend. Credentials are not among them: they
// come only from the standard AWS chain (environment, shared files, roles),
// so they never pass through pgkeep's configuration or messages.
type Options struct {
	Bucket    string
	Prefix    string // key prefix inside the bucket; slashes at either end are ignored
	Endpoint  string // "" = AWS; e.g. "http://127.0.0.1:9000"
	Region    string // "" = the AWS chain's (AWS_REGION), else us-east-1
	PathStyle bool
	// Timeout bounds each request-level operation, SDK retries included:
	// Stat, Delete, a listing page, a single-part Put, and within a
	// multipart Put each of its requests (a many-GiB upload cannot have a
	// fixed total bound). Reading the caller's data is not timed. 0 = 60s.
	Timeout     time.Duration
	MaxAttempts int   // SDK attempts per request (0 = 3)
	PartSize    int64 // multipart part size (0 = 8 MiB; at least 5 MiB)
	Concurrency int   // parallel part uploads (0 = 4)
}

// Backend is a bucket prefix.
type Backend struct {
	o      Options
	client *s3.Client
	// parts keeps part buffers for reuse across puts: a backup uploads
	// pack after pack, and fresh 8 MiB buffers for each would pile up as
	// garbage (the Go heap grows to twice what is live between GCs).
	parts chan []byte
	// slots holds a token for each part buffer in use, across all puts:
	// Concurrency+1 at most (one filling, the others uploading), however
	// many puts run at once, so a backup's parallel pack uploads share
	// one memory budget.
	slots chan struct{}
}

// newPart returns a PartSize buffer; the caller holds a slot for it.
func (b *Backend) newPart() []byte {
	select {
	case buf := <-b.parts:
		return buf[:cap(buf)]
	default:
		return make([]byte, b.o.PartSize)
	}
}

// partBuffer waits for a slot, then returns a part buffer.
func (b *Backend) partBuffer(ctx context.Context) ([]byte, error) {
	select {
	case b.slots <- struct{}{}:
		return b.newPart(), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// releasePart gives back a buffer from partBuffer (others are ignored):
// kept for reuse if there is room, and its slot freed.
func (b *Backend) releasePart(buf []byte) {
	if int64(cap(buf)) != b.o.PartSize {
		return
	}
	select {
	case b.parts <- buf:
	default:
	}
	<-b.slots
}

// New creates the client; it does not contact the server.
func New(ctx context.Context, o Options) (*Backend, error) {
	if o.Bucket == "" {
		return nil, errors.New("s3: no bucket")
	}
	if o.Timeout <= 0 {
		o.Timeout = 60 * time.Second
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 3
	}
	if o.PartSize <= 0 {
		o.PartSize = 8 << 20
	}
	o.PartSize = max(o.PartSize, minPartSize)
	if o.Concurrency <= 0 {
		o.Concurrency = 4
	}
	o.Prefix = strings.Trim(o.Prefix, "/")
	// A buildable client, so the SDK can still apply AWS_CA_BUNDLE. The
	// per-attempt bounds let the retryer replace a hung connection while the
	// operation's Timeout still has room; a refused dial fails at once.
	httpClient := awshttp.NewBuildableClient().
		WithDialerOptions(func(d *net.Dialer) { d.Timeout = 5 * time.Second }).
		WithTransportOptions(func(tr *http.Transport) {
			tr.MaxIdleConnsPerHost = 32
			tr.ResponseHeaderTimeout = 30 * time.Second
			tr.TLSHandshakeTimeout = 10 * time.Second
		})
	loadOpts := []func(*config.LoadOptions) error{
		config.WithHTTPClient(httpClient),
		config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(so *retry.StandardOptions) {
				so.MaxAttempts = o.MaxAttempts
				so.MaxBackoff = 2 * time.Second
			})
		}),
	}
	if o.Region != "" {
		loadOpts = append(loadOpts, config.WithRegion(o.Region))
	}
	cfg, err := config.LoadDefaultConfig(ctx, loadOpts...)
	if err != nil {
		return nil, fmt.Errorf("s3: load AWS configuration: %w", err)
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	client := s3.NewFromConfig(cfg, func(so *s3.Options) {
		if o.Endpoint != "" {
			so.BaseEndpoint = aws.String(o.Endpoint)
		}
		so.UsePathStyle = o.PathStyle
		// Newer SDKs add CRC checksums (trailers on streaming bodies) by
		// default, which MinIO and other self-hosted stores may reject.
		so.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		so.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	})
	return &Backend{o: o, client: client, parts: make(chan []byte, o.Concurrency+1), slots: make(chan struct{}, o.Concurrency+1)}, nil
}

func (b *Backend) String() string {
	if b.o.Prefix == "" {
		return "s3://" + b.o.Bucket
	}
	return "s3://" + b.o.Bucket + "/" + b.o.Prefix
}

func (b *Backend) key(name string) string {
	if b.o.Prefix == "" {
		return name
	}
	return b.o.Prefix + "/" + name
}

// checkName applies the fs backend's rules, so a repository can be copied
// between backends unchanged.
func checkName(name string) error {
	if name == "" || name == "." || strings.HasPrefix(name, "/") || strings.Contains(name, "\\") ||
		strings.HasPrefix(name, ".tmp") || path.Clean(name) != name || strings.Contains(name, "..") ||
		strings.ContainsRune(name, 0) {
		return fmt.Errorf("invalid object name %q (want a clean relative slash path)", name)
	}
	return nil
}

// classify maps S3 errors onto storage's and adds the operation and name.
// SDK errors carry the request, never the signing key.
func classify(op, name string, err error) error {
	var ae smithy.APIError
	if errors.As(err, &ae) && ae.ErrorCode() == "NoSuchBucket" {
		return fmt.Errorf("s3 %s %s: bucket does not exist: %w", op, name, err)
	}
	var re interface{ HTTPStatusCode() int }
	if errors.As(err, &re) {
		code := re.HTTPStatusCode()
		if op == "put" {
			// Only Put sends conditions: 412 PreconditionFailed is the name
			// being taken, 409 ConditionalRequestConflict AWS's answer to a
			// conditional write racing another one. (A 404 here is
			// NoSuchUpload, not a missing object.)
			if code == http.StatusPreconditionFailed || code == http.StatusConflict {
				return fmt.Errorf("s3 %s %s: %w", op, name, storage.ErrExists)
			}
		} else if code == http.StatusNotFound {
			// NoSuchKey from GET, a bare 404 ("NotFound") from HEAD.
			return fmt.Errorf("s3 %s %s: %w", op, name, storage.ErrNotFound)
		}
	}
	return fmt.Errorf("s3 %s %s: %w", op, name, err)
}

// isAPIError says whether the server answered (as opposed to a transport
// failure or timeout).
func isAPIError(err error) bool {
	var ae smithy.APIError
	return errors.As(err, &ae)
}

// Put implements storage.Backend. Objects of up to one part are sent with
// one PutObject; larger ones as a multipart upload, PartSize bytes at a
// time with at most Concurrency parts in flight and Concurrency+1 part
// buffers in memory.
//
// With IfAbsent, bodies of preCheckSize or more first HEAD the name. That
// is only an optimisation (If-None-Match is what makes the write atomic):
// MinIO answers a conditional PutObject on a taken name as soon as it sees
// the headers and resets the connection while the client is still sending,
// so the client mostly sees "connection reset", retries the whole body, and
// never reads the 412; a multipart upload would send every part before
// learning. Re-archiving an existing WAL segment is routine, so that case
// should cost one HEAD.
func (b *Backend) Put(ctx context.Context, name string, r io.Reader, opts storage.PutOptions) error {
	err := b.put(ctx, name, r, opts)
	if err != nil && opts.IfAbsent && ctx.Err() == nil && lostAnswer(err) {
		// The racing case of the above: the 412 was lost to a reset. If the
		// name exists now, report that. It may even be our own write whose
		// answer was lost (a retry then gets 412), so callers that must know
		// compare content, which is right whoever wrote it.
		if _, serr := b.head(ctx, name); serr == nil {
			return fmt.Errorf("s3 put %s: %w", name, storage.ErrExists)
		}
	}
	return err
}

// lostAnswer says whether the server hung up while we were sending, which
// is how MinIO refuses a large conditional write. (Not a timeout or refused
// connection: asking again would only double the wait.)
func lostAnswer(err error) bool {
	return !isReadError(err) && (errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE))
}

// readError marks a failure of the caller's reader, which says nothing
// about the server.
type readError struct{ err error }

func (e *readError) Error() string { return "read: " + e.err.Error() }
func (e *readError) Unwrap() error { return e.err }

func isReadError(err error) bool {
	var re *readError
	return errors.As(err, &re)
}

// readPart fills buf from r, stopping early if ctx is done. It returns the
// byte count and whether r is exhausted.
func readPart(ctx context.Context, r io.Reader, buf []byte) (int, bool, error) {
	n, err := io.ReadFull(ctxReader{ctx, r}, buf)
	switch {
	case err == nil:
		return n, false, nil
	case err == io.EOF || err == io.ErrUnexpectedEOF:
		return n, true, nil
	case ctx.Err() != nil && errors.Is(err, ctx.Err()):
		return n, false, err
	default:
		return n, false, &readError{err}
	}
}

func (b *Backend) put(ctx context.Context, name string, r io.Reader, opts storage.PutOptions) error {
	if err := checkName(name); err != nil {
		return err
	}
	first, rest, err := b.readFirst(ctx, r)
	owned := true // first is released here unless multipart takes it over
	defer func() {
		if owned {
			b.releasePart(first)
		}
	}()
	if err != nil {
		return fmt.Errorf("s3 put %s: %w", name, err)
	}
	n, eof := len(first), rest == nil
	if opts.IfAbsent && (!eof || n >= preCheckSize) {
		_, err := b.head(ctx, name)
		switch {
		case err == nil:
			return fmt.Errorf("s3 put %s: %w", name, storage.ErrExists)
		case isNotFound(err):
		case !isAPIError(err):
			// Server unreachable: the put would fail the same way.
			return fmt.Errorf("s3 put %s: check whether it exists: %w", name, err)
		default:
			// E.g. 403 for credentials that may write but not read: let
			// the conditional write decide.
		}
	}
	if !eof {
		owned = false
		return b.multipart(ctx, name, first, rest, opts)
	}
	ctx, cancel := context.WithTimeout(ctx, b.o.Timeout)
	defer cancel()
	in := &s3.PutObjectInput{
		Bucket: aws.String(b.o.Bucket),
		Key:    aws.String(b.key(name)),
		// Seekable with a known length: the SDK can sign and retry it.
		Body:          bytes.NewReader(first),
		ContentLength: aws.Int64(int64(n)),
	}
	if opts.IfAbsent {
		in.IfNoneMatch = aws.String("*")
	}
	if _, err := b.client.PutObject(ctx, in); err != nil {
		return classify("put", name, err)
	}
	return nil
}

// readFirst reads the first part. Small objects (most of them) only cost a
// small buffer, and an object of exactly one part still counts as ending
// inside it. rest is nil if r ended, else the remaining stream.
func (b *Backend) readFirst(ctx context.Context, r io.Reader) (first []byte, rest io.Reader, err error) {
	small := make([]byte, 64<<10)
	n, eof, err := readPart(ctx, r, small)
	if err != nil || eof {
		return small[:n], nil, err
	}
	buf, err := b.partBuffer(ctx)
	if err != nil {
		return nil, nil, err
	}
	copy(buf, small)
	m, eof, err := readPart(ctx, r, buf[n:])
	if err != nil || eof {
		return buf[:n+m], nil, err // the caller releases it
	}
	var one [1]byte
	k, eof, err := readPart(ctx, r, one[:])
	if err != nil || (eof && k == 0) {
		return buf, nil, err
	}
	return buf, io.MultiReader(bytes.NewReader(one[:k]), r), nil
}

// multipart uploads first and the rest of r as a multipart upload and
// completes it only when every part succeeded; otherwise it aborts it.
func (b *Backend) multipart(ctx context.Context, name string, first []byte, r io.Reader, opts storage.PutOptions) (err error) {
	key := b.key(name)
	cctx, cancel := context.WithTimeout(ctx, b.o.Timeout)
	created, err := b.client.CreateMultipartUpload(cctx, &s3.CreateMultipartUploadInput{Bucket: aws.String(b.o.Bucket), Key: aws.String(key)})
	cancel()
	if err != nil {
		b.releasePart(first)
		return classify("put", name, err)
	}
	uploadID := created.UploadId
	defer func() {
		if err == nil {
			return
		}
		// A fresh, short context: the caller's may be why we stop. If this
		// fails too (server gone), the parts stay until a lifecycle rule
		// (AbortIncompleteMultipartUpload) removes them; they are never
		// visible as an object.
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(b.o.Timeout, 15*time.Second))
		defer cancel()
		b.client.AbortMultipartUpload(actx, &s3.AbortMultipartUploadInput{Bucket: aws.String(b.o.Bucket), Key: aws.String(key), UploadId: uploadID})
	}()

	// Parts stop early once one has failed.
	pctx, stop := context.WithCancel(ctx)
	defer stop()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		parts    []types.CompletedPart
		firstErr error
		// Buffers come back here when their part is uploaded; at most
		// Concurrency+1 exist: one filling, the rest uploading.
		free = make(chan []byte, b.o.Concurrency+1)
		sem  = make(chan struct{}, b.o.Concurrency)
	)
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if firstErr == nil {
			firstErr = err
			stop()
		}
	}
	failed := func() error {
		mu.Lock()
		defer mu.Unlock()
		return firstErr
	}
	upload := func(num int32, data []byte) {
		defer wg.Done()
		defer func() { free <- data }()
		sem <- struct{}{}
		defer func() { <-sem }()
		rctx, cancel := context.WithTimeout(pctx, b.o.Timeout)
		defer cancel()
		out, err := b.client.UploadPart(rctx, &s3.UploadPartInput{
			Bucket: aws.String(b.o.Bucket), Key: aws.String(key), UploadId: uploadID,
			PartNumber: aws.Int32(num), Body: bytes.NewReader(data), ContentLength: aws.Int64(int64(len(data))),
		})
		if err != nil {
			fail(classify("put", fmt.Sprintf("%s (part %d)", name, num), err))
			return
		}
		mu.Lock()
		parts = append(parts, types.CompletedPart{ETag: out.ETag, PartNumber: aws.Int32(num)})
		mu.Unlock()
	}
	// nextBuffer waits for a free buffer, which also bounds the parts in
	// flight.
	nextBuffer := func() ([]byte, error) {
		select {
		case buf := <-free:
			return buf[:cap(buf)], nil
		default:
		}
		select {
		case buf := <-free:
			return buf[:cap(buf)], nil
		case b.slots <- struct{}{}:
			return b.newPart(), nil
		case <-pctx.Done():
			return nil, pctx.Err()
		}
	}

	defer func() {
		// Every upload has returned its buffer by now (wg.Wait below).
		for {
			select {
			case buf := <-free:
				b.releasePart(buf)
			default:
				return
			}
		}
	}()
	data := first
	for num := int32(1); ; num++ {
		wg.Add(1)
		go upload(num, data)
		buf, err := nextBuffer()
		if err != nil {
			fail(fmt.Errorf("s3 put %s: %w", name, err))
			break
		}
		n, eof, err := readPart(pctx, r, buf)
		if err != nil {
			free <- buf
			fail(fmt.Errorf("s3 put %s: %w", name, err))
			break
		}
		if n == 0 {
			free <- buf
			break // the stream ended exactly at a part boundary
		}
		if num+1 > maxParts {
			free <- buf
			fail(fmt.Errorf("s3 put %s: more than %d parts of %d bytes", name, maxParts, b.o.PartSize))
			break
		}
		data = buf[:n]
		if eof {
			wg.Add(1)
			go upload(num+1, data)
			break
		}
	}
	wg.Wait()
	if err := failed(); err != nil {
		if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
			return fmt.Errorf("s3 put %s: %w (%v)", name, cerr, err)
		}
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("s3 put %s: %w", name, err)
	}
	slices.SortFunc(parts, func(a, b types.CompletedPart) int { return int(*a.PartNumber - *b.PartNumber) })
	in := &s3.CompleteMultipartUploadInput{
		Bucket: aws.String(b.o.Bucket), Key: aws.String(key), UploadId: uploadID,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
	}
	if opts.IfAbsent {
		in.IfNoneMatch = aws.String("*")
	}
	cctx, cancel = context.WithTimeout(ctx, b.o.Timeout)
	defer cancel()
	if _, err := b.client.CompleteMultipartUpload(cctx, in); err != nil {
		// A refused completion leaves the upload pending: the deferred
		// abort removes its parts.
		return classify("put", name, err)
	}
	return nil
}

// ctxReader stops reading the caller's data once the context is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// Get implements storage.Backend.
func (b *Backend) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	return b.GetRange(ctx, name, 0, -1)
}

// GetRange implements storage.Backend. The timeout covers the request up to
// the response headers; the body is then read at the caller's pace under the
// caller's context (a large object may take longer than Timeout to read).
func (b *Backend) GetRange(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	if offset < 0 {
		return nil, fmt.Errorf("s3 get %s: negative offset %d", name, offset)
	}
	if length == 0 {
		// No Range header can ask for nothing; still say whether it exists.
		if _, err := b.Stat(ctx, name); err != nil {
			return nil, err
		}
		return io.NopCloser(bytes.NewReader(nil)), nil
	}
	in := &s3.GetObjectInput{Bucket: aws.String(b.o.Bucket), Key: aws.String(b.key(name))}
	if offset > 0 || length > 0 {
		rng := fmt.Sprintf("bytes=%d-", offset)
		if length > 0 {
			rng = fmt.Sprintf("bytes=%d-%d", offset, offset+length-1)
		}
		in.Range = aws.String(rng)
	}
	ctx, cancel := context.WithCancel(ctx)
	timer := time.AfterFunc(b.o.Timeout, cancel)
	out, err := b.client.GetObject(ctx, in)
	if !timer.Stop() {
		// Our timer cancelled the request, or the body just as it came:
		// report a timeout rather than "context canceled".
		cancel()
		if err == nil {
			out.Body.Close()
			return nil, fmt.Errorf("s3 get %s: no answer within %s: %w", name, b.o.Timeout, context.DeadlineExceeded)
		}
		if !isAPIError(err) {
			return nil, fmt.Errorf("s3 get %s: no answer within %s: %w (%v)", name, b.o.Timeout, context.DeadlineExceeded, err)
		}
	}
	if err != nil {
		cancel()
		return nil, classify("get", name, err)
	}
	return &cancelCloser{ReadCloser: out.Body, cancel: cancel}, nil
}

type cancelCloser struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c *cancelCloser) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

// head is HeadObject under the operation timeout, with the SDK's error.
func (b *Backend) head(ctx context.Context, name string) (*s3.HeadObjectOutput, error) {
	ctx, cancel := context.WithTimeout(ctx, b.o.Timeout)
	defer cancel()
	return b.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(b.o.Bucket), Key: aws.String(b.key(name))})
}

func isNotFound(err error) bool {
	var re interface{ HTTPStatusCode() int }
	return errors.As(err, &re) && re.HTTPStatusCode() == http.StatusNotFound
}

// Stat implements storage.Backend.
func (b *Backend) Stat(ctx context.Context, name string) (storage.ObjectInfo, error) {
	if err := checkName(name); err != nil {
		return storage.ObjectInfo{}, err
	}
	out, err := b.head(ctx, name)
	if err != nil {
		return storage.ObjectInfo{}, classify("stat", name, err)
	}
	info := storage.ObjectInfo{Name: name, Size: aws.ToInt64(out.ContentLength), ETag: aws.ToString(out.ETag)}
	if out.LastModified != nil {
		info.ModTime = *out.LastModified
	}
	return info, nil
}

// List implements storage.Backend. S3 lists keys in UTF-8 byte order, which
// is the lexical order the interface promises.
func (b *Backend) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	strip := ""
	if b.o.Prefix != "" {
		strip = b.o.Prefix + "/"
	}
	in := &s3.ListObjectsV2Input{Bucket: aws.String(b.o.Bucket), Prefix: aws.String(strip + prefix)}
	if listPageSize > 0 {
		in.MaxKeys = aws.Int32(listPageSize)
	}
	p := s3.NewListObjectsV2Paginator(b.client, in)
	for p.HasMorePages() {
		pctx, cancel := context.WithTimeout(ctx, b.o.Timeout)
		page, err := p.NextPage(pctx)
		cancel()
		if err != nil {
			return classify("list", prefix, err)
		}
		for _, obj := range page.Contents {
			info := storage.ObjectInfo{Name: strings.TrimPrefix(aws.ToString(obj.Key), strip), Size: aws.ToInt64(obj.Size), ETag: aws.ToString(obj.ETag)}
			if obj.LastModified != nil {
				info.ModTime = *obj.LastModified
			}
			if err := fn(info); err != nil {
				return err
			}
		}
	}
	return nil
}

// Delete implements storage.Backend.
func (b *Backend) Delete(ctx context.Context, name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, b.o.Timeout)
	defer cancel()
	_, err := b.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(b.o.Bucket), Key: aws.String(b.key(name))})
	if err != nil {
		err = classify("delete", name, err)
		if errors.Is(err, storage.ErrNotFound) {
			return nil
		}
		return err
	}
	return nil
}

// CreateBucket creates the bucket; one we already own is fine (used by tests
// and `repo init` helpers).
func (b *Backend) CreateBucket(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, b.o.Timeout)
	defer cancel()
	_, err := b.client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(b.o.Bucket)})
	if err != nil {
		var owned *types.BucketAlreadyOwnedByYou
		if errors.As(err, &owned) {
			return nil
		}
		return classify("create bucket", b.o.Bucket, err)
	}
	return nil
}
