package s3

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/pgkeep/pgkeep/storage"
)

// probePrefix holds the objects ProbeConditionalPut writes and deletes.
const probePrefix = "pgkeep-probe/"

// ProbeConditionalPut implements storage.ConditionalPutProber. pgkeep's
// promise that an archived WAL segment or a manifest is never overwritten
// rests on the server refusing a write with If-None-Match: * to a taken
// name, and not every S3-compatible store does (some ignore the header and
// overwrite). The probe asks the server itself, the two ways Put sends the
// condition: a PutObject, then a one-part multipart upload, each to a probe
// name that is already taken, each of which must be refused (412, or 409
// for a conditional write racing another). The probe object is then
// deleted, so the repository's listing never shows it.
func (b *Backend) ProbeConditionalPut(ctx context.Context) (err error) {
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return fmt.Errorf("s3 probe: %w", err)
	}
	name := probePrefix + "if-none-match-" + hex.EncodeToString(rnd[:])
	where := b.describe()
	if err := b.put(ctx, name, bytes.NewReader([]byte("first\n")), storage.PutOptions{IfAbsent: true}); err != nil {
		return fmt.Errorf("the S3 store at %s failed a conditional put (If-None-Match: *) of a new probe object: %w", where, err)
	}
	defer func() {
		// Also after a failure or a cancelled ctx: never leave the probe.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(b.o.Timeout, 15*time.Second))
		defer cancel()
		if derr := b.Delete(dctx, name); derr != nil && err == nil {
			err = fmt.Errorf("the S3 store at %s: remove the probe object: %w", where, derr)
		}
	}()
	err = b.put(ctx, name, bytes.NewReader([]byte("second\n")), storage.PutOptions{IfAbsent: true})
	switch {
	case err == nil:
		return fmt.Errorf("the S3 store at %s ignored If-None-Match: * (a second conditional put of the probe succeeded); pgkeep cannot guarantee archived WAL is never overwritten there", where)
	case !errors.Is(err, storage.ErrExists):
		return fmt.Errorf("the S3 store at %s: conditional put (If-None-Match: *) of a taken probe name: %w", where, err)
	}
	// Larger objects (WAL segments above one part, packs) complete a
	// multipart upload with the condition: a one-part upload of a few
	// bytes goes the same way (only parts before the last have a minimum
	// size).
	err = b.multipart(ctx, name, []byte("third\n"), bytes.NewReader(nil), storage.PutOptions{IfAbsent: true})
	switch {
	case err == nil:
		return fmt.Errorf("the S3 store at %s ignored If-None-Match: * on CompleteMultipartUpload (a conditional multipart upload over the probe succeeded); pgkeep cannot guarantee archived WAL is never overwritten there", where)
	case !errors.Is(err, storage.ErrExists):
		return fmt.Errorf("the S3 store at %s: conditional multipart upload (If-None-Match: *) to a taken probe name: %w", where, err)
	}
	return nil
}

// describe names the store for messages: the endpoint (AWS when none is
// configured) and the bucket and prefix. Never credentials: anything but
// scheme, host and path is left out of the endpoint.
func (b *Backend) describe() string {
	ep := "AWS"
	if b.o.Endpoint != "" {
		u, err := url.Parse(b.o.Endpoint)
		if err != nil || u.Host == "" {
			ep = "the configured endpoint"
		} else {
			ep = (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}).String()
		}
	}
	return ep + " (" + b.String() + ")"
}
