package s3test

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// StripIfNoneMatch puts a reverse proxy on 127.0.0.1 in front of s that
// takes If-None-Match off every request, and returns the same server as
// seen through it: a real store that ignores create-if-absent, the way
// some S3-compatible stores do (they overwrite). The client signed the
// header and the proxy's host, so the proxy signs every request again with
// the server's keys. Endpoint and Port are the proxy's; Stop and Restart
// belong to s, not to the returned value. t.Cleanup closes the proxy.
func (s *Server) StripIfNoneMatch(t testing.TB) *Server {
	t.Helper()
	return s.stripIfNoneMatch(t, func(*http.Request) bool { return true })
}

// StripIfNoneMatchOnComplete is StripIfNoneMatch for CompleteMultipartUpload
// only: a store that honours the condition on PutObject but not when it
// completes a multipart upload.
func (s *Server) StripIfNoneMatchOnComplete(t testing.TB) *Server {
	t.Helper()
	return s.stripIfNoneMatch(t, func(r *http.Request) bool {
		return r.Method == http.MethodPost && r.URL.Query().Has("uploadId")
	})
}

func (s *Server) stripIfNoneMatch(t testing.TB, strip func(*http.Request) bool) *Server {
	t.Helper()
	target, err := url.Parse(s.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	stripped := new(atomic.Int64)
	creds := aws.Credentials{AccessKeyID: s.AccessKey, SecretAccessKey: s.SecretKey}
	// S3 signs the path as sent, without escaping it a second time.
	signer := v4.NewSigner(func(o *v4.SignerOptions) { o.DisableURIPathEscaping = true })
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = target.Host
			if pr.Out.Header.Get("If-None-Match") != "" && strip(pr.Out) {
				pr.Out.Header.Del("If-None-Match")
				stripped.Add(1)
			}
			// Every request: the client signed the proxy's host.
			pr.Out.Header.Del("Authorization")
			payload := pr.Out.Header.Get("X-Amz-Content-Sha256")
			if payload == "" {
				payload = "UNSIGNED-PAYLOAD"
			}
			if err := signer.SignHTTP(pr.Out.Context(), creds, pr.Out, payload, "s3", s.Region, time.Now()); err != nil {
				// The server then refuses the unsigned request: the test
				// sees that, not a silent pass.
				t.Errorf("s3test proxy: sign %s %s: %v", pr.Out.Method, pr.Out.URL.Path, err)
			}
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			w.WriteHeader(http.StatusBadGateway)
		},
	}
	hs := httptest.NewServer(rp) // 127.0.0.1, a free port
	t.Cleanup(hs.Close)
	u, err := url.Parse(hs.URL)
	if err != nil {
		t.Fatal(err)
	}
	p := &Server{
		Kind: s.Kind, Endpoint: hs.URL, AccessKey: s.AccessKey, SecretKey: s.SecretKey, Region: s.Region,
		Dir: s.Dir, IfNoneMatchStripped: stripped, bin: s.bin, logPath: s.logPath,
	}
	p.Port, _ = strconv.Atoi(u.Port())
	return p
}
