package s3

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/pgkeep/pgkeep/storage"
)

func init() {
	storage.Register("s3", open)
	storage.RegisterURLCheck("s3", "s3://bucket/prefix", func(u *url.URL) error { _, err := ParseConfig(u, nil); return err })
}

// ParseConfig reads an s3://bucket/prefix URL and the s3 section's
// settings (storage.Options.Params: endpoint, region, path_style, timeout,
// max_attempts, part_size_mb, upload_concurrency) into Options.
// Credentials are never among them (see Options).
func ParseConfig(u *url.URL, params map[string]string) (Options, error) {
	if u.Host == "" {
		return Options{}, fmt.Errorf("repository %q: s3 URLs name a bucket (s3://bucket/prefix)", u.Redacted())
	}
	if u.User != nil {
		return Options{}, errors.New("repository URL must not contain credentials; use the AWS environment or shared credentials file")
	}
	o := Options{
		Bucket:   u.Host,
		Prefix:   strings.Trim(u.Path, "/"),
		Endpoint: params["endpoint"],
		Region:   params["region"],
	}
	var err error
	num := func(key string) int {
		v, ok := params[key]
		if !ok || v == "" || err != nil {
			return 0
		}
		n, perr := strconv.Atoi(v)
		if perr != nil {
			err = fmt.Errorf("s3.%s: %q is not a number", key, v)
		}
		return n
	}
	o.MaxAttempts = num("max_attempts")
	o.PartSize = int64(num("part_size_mb")) << 20
	o.Concurrency = num("upload_concurrency")
	if v := params["path_style"]; v != "" && err == nil {
		if o.PathStyle, err = strconv.ParseBool(v); err != nil {
			err = fmt.Errorf("s3.path_style: %q is not true or false", v)
		}
	}
	if v := params["timeout"]; v != "" && err == nil {
		if o.Timeout, err = time.ParseDuration(v); err != nil {
			err = fmt.Errorf("s3.timeout: %q is not a duration", v)
		}
	}
	return o, err
}

func open(ctx context.Context, u *url.URL, so storage.Options) (storage.Backend, error) {
	o, err := ParseConfig(u, so.Params)
	if err != nil {
		return nil, err
	}
	return New(ctx, o)
}
