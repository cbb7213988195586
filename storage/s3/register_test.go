package s3

import (
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestParseConfig(t *testing.T) {
	u, _ := url.Parse("s3://bucket/some/prefix/")
	o, err := ParseConfig(u, map[string]string{
		"endpoint": "http://127.0.0.1:9000", "region": "eu-west-1", "path_style": "true",
		"timeout": "90s", "max_attempts": "5", "part_size_mb": "16", "upload_concurrency": "6", "unrelated": "x",
	})
	want := Options{Bucket: "bucket", Prefix: "some/prefix", Endpoint: "http://127.0.0.1:9000", Region: "eu-west-1",
		PathStyle: true, Timeout: 90 * time.Second, MaxAttempts: 5, PartSize: 16 << 20, Concurrency: 6}
	if err != nil || o != want {
		t.Fatalf("got %+v %v\nwant %+v", o, err, want)
	}
	for raw, msg := range map[string]string{
		"s3:///x":             "s3 URLs name a bucket",
		"s3://key:secret@b/x": "must not contain credentials",
	} {
		u, _ := url.Parse(raw)
		_, err := ParseConfig(u, nil)
		if err == nil || !strings.Contains(err.Error(), msg) || strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: %v", raw, err)
		}
	}
	if _, err := ParseConfig(u, map[string]string{"max_attempts": "many"}); err == nil {
		t.Error("bad number accepted")
	}
}
