// Package s3 stores a repository in an S3 bucket (AWS, MinIO or any
// S3-compatible store) through aws-sdk-go-v2.
//
// Atomicity: a single PutObject, or a multipart upload that is completed
// only after every part succeeded, so an interrupted writer leaves nothing
// visible. Create-if-absent uses If-None-Match: * on PutObject and on
// CompleteMultipartUpload.
package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
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

// Options configures the backend. Credentials are not among them: they
// come from the standard AWS chain (environment, shared files, roles).
type Options struct {
	Bucket      string
	Prefix      string
	Endpoint    string // "" = AWS
	Region      string // "" = AWS_REGION, else us-east-1
	PathStyle   bool
	Timeout     time.Duration // bound for one whole operation, retries included (0 = 60s)
	MaxAttempts int           // per request (0 = 3)
	PartSize    int64         // multipart part size (0 = 16 MiB)
	Concurrency int           // parallel part uploads (0 = 4)
}

// Backend is a bucket prefix.
type Backend struct {
	o      Options
	client *s3.Client
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
		o.PartSize = 16 << 20
	}
	if o.PartSize < 5<<20 {
		o.PartSize = 5 << 20 // S3's minimum part size
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 4
	}
	o.Prefix = strings.Trim(o.Prefix, "/")
	// A buildable client, so the SDK can still apply AWS_CA_BUNDLE.
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
		// MinIO and most self-hosted stores reject or ignore the newer
		// default integrity checksums on streaming bodies.
		so.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		so.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	})
	return &Backend{o: o, client: client}, nil
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

func checkName(name string) error {
	if name == "" || strings.HasPrefix(name, "/") || strings.Contains(name, "..") || strings.Contains(name, "\\") {
		return fmt.Errorf("invalid object name %q", name)
	}
	return nil
}

// classify maps S3 errors onto storage's and keeps messages short.
func classify(op, name string, err error) error {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode() {
		case "NoSuchKey", "NotFound":
			return fmt.Errorf("%s %s: %w", op, name, storage.ErrNotFound)
		case "PreconditionFailed", "ConditionalRequestConflict":
			return fmt.Errorf("%s %s: %w", op, name, storage.ErrExists)
		case "NoSuchBucket":
			return fmt.Errorf("%s %s: bucket does not exist: %w", op, name, err)
		}
	}
	var re interface{ HTTPStatusCode() int }
	if errors.As(err, &re) {
		switch re.HTTPStatusCode() {
		case http.StatusNotFound:
			return fmt.Errorf("%s %s: %w", op, name, storage.ErrNotFound)
		case http.StatusPreconditionFailed:
			return fmt.Errorf("%s %s: %w", op, name, storage.ErrExists)
		}
	}
	return fmt.Errorf("s3 %s %s: %w", op, name, err)
}

// Put implements storage.Backend.
func (b *Backend) Put(ctx context.Context, name string, r io.Reader, opts storage.PutOptions) error {
	err := b.put(ctx, name, r, opts)
	if err != nil && opts.IfAbsent && !errors.Is(err, storage.ErrExists) && ctx.Err() == nil {
		// A server that refuses a conditional write early may reset the
		// connection while the body is still being sent, so the 412 is never
		// read. If the name exists now, report that: the caller compares
		// content, which is right whoever wrote it.
		if _, serr := b.Stat(ctx, name); serr == nil {
			return fmt.Errorf("put %s: %w", name, storage.ErrExists)
		}
	}
	return err
}

func (b *Backend) put(ctx context.Context, name string, r io.Reader, opts storage.PutOptions) error {
	if err := checkName(name); err != nil {
		return err
	}
	first := make([]byte, b.o.PartSize)
	n, err := io.ReadFull(r, first)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		ctx, cancel := context.WithTimeout(ctx, b.o.Timeout)
		defer cancel()
		in := &s3.PutObjectInput{
			Bucket:        aws.String(b.o.Bucket),
			Key:           aws.String(b.key(name)),
			Body:          bytes.NewReader(first[:n]),
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
	if err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}
	return b.multipart(ctx, name, first, r, opts)
}

// multipart uploads parts in parallel with bounded memory and completes
// the upload only when all succeeded; otherwise it aborts it.
func (b *Backend) multipart(ctx context.Context, name string, first []byte, r io.Reader, opts storage.PutOptions) (err error) {
	key := b.key(name)
	cctx, cancel := context.WithTimeout(ctx, b.o.Timeout)
	created, err := b.client.CreateMultipartUpload(cctx, &s3.CreateMultipartUploadInput{Bucket: aws.String(b.o.Bucket), Key: aws.String(key)})
	cancel()
	if err != nil {
		return classify("put", name, err)
	}
	uploadID := created.UploadId
	defer func() {
		if err != nil {
			// A fresh context: the caller's may be the reason we stop.
			actx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			b.client.AbortMultipartUpload(actx, &s3.AbortMultipartUploadInput{Bucket: aws.String(b.o.Bucket), Key: aws.String(key), UploadId: uploadID})
			cancel()
		}
	}()
	var (
		mu       sync.Mutex
		parts    []types.CompletedPart
		firstErr error
		wg       sync.WaitGroup
		sem      = make(chan struct{}, b.o.Concurrency)
	)
	firstBuf := first
	upload := func(num int32, data []byte) {
		defer wg.Done()
		defer func() { <-sem }()
		pctx, cancel := context.WithTimeout(ctx, b.o.Timeout)
		defer cancel()
		out, err := b.client.UploadPart(pctx, &s3.UploadPartInput{
			Bucket: aws.String(b.o.Bucket), Key: aws.String(key), UploadId: uploadID,
			PartNumber: aws.Int32(num), Body: bytes.NewReader(data), ContentLength: aws.Int64(int64(len(data))),
		})
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			if firstErr == nil {
				firstErr = classify("put", name, err)
			}
			return
		}
		parts = append(parts, types.CompletedPart{ETag: out.ETag, PartNumber: aws.Int32(num)})
	}
	failed := func() error {
		mu.Lock()
		defer mu.Unlock()
		return firstErr
	}
	buf := firstBuf
	for num := int32(1); ; num++ {
		sem <- struct{}{}
		if e := failed(); e != nil {
			<-sem
			wg.Wait()
			return e
		}
		wg.Add(1)
		go upload(num, buf)
		buf = make([]byte, b.o.PartSize)
		n, rerr := io.ReadFull(r, buf)
		if rerr == io.EOF {
			break
		}
		if rerr != nil && rerr != io.ErrUnexpectedEOF {
			wg.Wait()
			return fmt.Errorf("put %s: %w", name, rerr)
		}
		buf = buf[:n]
		if rerr == io.ErrUnexpectedEOF {
			sem <- struct{}{}
			wg.Add(1)
			go upload(num+1, buf)
			break
		}
	}
	wg.Wait()
	if e := failed(); e != nil {
		return e
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}
	sort.Slice(parts, func(i, j int) bool { return *parts[i].PartNumber < *parts[j].PartNumber })
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
		return classify("put", name, err)
	}
	return nil
}

// Get implements storage.Backend.
func (b *Backend) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	return b.GetRange(ctx, name, 0, -1)
}

// GetRange implements storage.Backend. The timeout covers the response
// headers; the body is read at the caller's pace under the caller's context.
func (b *Backend) GetRange(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	in := &s3.GetObjectInput{Bucket: aws.String(b.o.Bucket), Key: aws.String(b.key(name))}
	if offset > 0 || length >= 0 {
		if length == 0 {
			return io.NopCloser(bytes.NewReader(nil)), nil
		}
		rng := fmt.Sprintf("bytes=%d-", offset)
		if length > 0 {
			rng = fmt.Sprintf("bytes=%d-%d", offset, offset+length-1)
		}
		in.Range = aws.String(rng)
	}
	ctx, cancel := context.WithCancel(ctx)
	timer := time.AfterFunc(b.o.Timeout, cancel)
	out, err := b.client.GetObject(ctx, in)
	timer.Stop()
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

// Stat implements storage.Backend.
func (b *Backend) Stat(ctx context.Context, name string) (storage.ObjectInfo, error) {
	if err := checkName(name); err != nil {
		return storage.ObjectInfo{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, b.o.Timeout)
	defer cancel()
	out, err := b.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(b.o.Bucket), Key: aws.String(b.key(name))})
	if err != nil {
		return storage.ObjectInfo{}, classify("stat", name, err)
	}
	info := storage.ObjectInfo{Name: name, Size: aws.ToInt64(out.ContentLength)}
	if out.LastModified != nil {
		info.ModTime = *out.LastModified
	}
	return info, nil
}

// List implements storage.Backend.
func (b *Backend) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	full := b.key(prefix)
	if b.o.Prefix != "" && prefix == "" {
		full = b.o.Prefix + "/"
	}
	p := s3.NewListObjectsV2Paginator(b.client, &s3.ListObjectsV2Input{Bucket: aws.String(b.o.Bucket), Prefix: aws.String(full)})
	strip := ""
	if b.o.Prefix != "" {
		strip = b.o.Prefix + "/"
	}
	for p.HasMorePages() {
		pctx, cancel := context.WithTimeout(ctx, b.o.Timeout)
		page, err := p.NextPage(pctx)
		cancel()
		if err != nil {
			return classify("list", prefix, err)
		}
		for _, obj := range page.Contents {
			info := storage.ObjectInfo{Name: strings.TrimPrefix(aws.ToString(obj.Key), strip), Size: aws.ToInt64(obj.Size)}
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

// CreateBucket creates the bucket (used by tests and `repo init` helpers).
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
