package e2e

import (
	"context"
	"strings"
	"testing"

	"github.com/pgkeep/pgkeep/internal/s3test"
	"github.com/pgkeep/pgkeep/storage"
	"github.com/pgkeep/pgkeep/storage/s3"
)

// TestRepoInitProbesConditionalPut: `repo init` on S3 first checks that the
// store honours If-None-Match: * (wal-push's and the manifests' no-overwrite
// promise rests on it). MinIO and versitygw do, and get a repository; MinIO
// behind a proxy that strips the header (a store that ignores it) is refused
// with one line naming that behaviour, exit 1, and is left with no config
// object and no probe object.
func TestRepoInitProbesConditionalPut(t *testing.T) {
	minio := s3test.Start(t)
	versity := s3test.StartVersity(t)
	for _, c := range []struct {
		name string
		srv  *s3test.Server
		ok   bool
	}{
		{"minio", minio, true},
		{"versitygw", versity, true},
		{"minio behind a proxy stripping If-None-Match", minio.StripIfNoneMatch(t), false},
		{"versitygw behind a proxy stripping If-None-Match", versity.StripIfNoneMatch(t), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newRepo(t, repoOpts{kind: "s3", s3: c.srv, noInit: true})
			res := r.run(t, "repo", "init")
			where := c.srv.Endpoint + " (s3://" + r.bucket + "/cluster1)"
			if c.ok {
				if res.code != 0 || !strings.Contains(res.stdout, "initialized s3://"+r.bucket+"/cluster1") {
					t.Fatalf("repo init on %s: exit %d\n%s%s", c.srv.Kind, res.code, res.stdout, res.stderr)
				}
				if got := objects(t, c.srv, r.bucket); got != "cluster1/config.json" {
					t.Fatalf("after repo init the bucket holds %q, want only cluster1/config.json", got)
				}
				// The probe runs again and passes; the config is not replaced.
				again := r.run(t, "repo", "init")
				if again.code == 0 || !strings.Contains(again.stderr, "already initialized") {
					t.Fatalf("second repo init: exit %d\n%s%s", again.code, again.stdout, again.stderr)
				}
				return
			}
			want := "pgkeep: repo init: the S3 store at " + where + " ignored If-None-Match: * (a second conditional put of the probe succeeded); pgkeep cannot guarantee archived WAL is never overwritten there\n"
			if res.code != 1 || res.stderr != want || res.stdout != "" {
				t.Fatalf("repo init on a store ignoring If-None-Match: exit %d\nstdout %q\nstderr %q\nwant exit 1 and stderr %q", res.code, res.stdout, res.stderr, want)
			}
			if n := c.srv.IfNoneMatchStripped.Load(); n == 0 {
				t.Fatal("the proxy stripped no If-None-Match header")
			}
			if strings.Contains(res.stderr, c.srv.SecretKey) {
				t.Fatal("secret key in the message")
			}
			if got := objects(t, c.srv, r.bucket); got != "" {
				t.Fatalf("refused repo init left %q in the bucket", got)
			}
			// Nothing else will use the repository either.
			if res := r.run(t, "repo", "show"); res.code == 0 || !strings.Contains(res.stderr, "not initialized") {
				t.Fatalf("repo show after the refused init: exit %d\n%s%s", res.code, res.stdout, res.stderr)
			}
		})
	}
}

// objects lists every key in the bucket, space-separated.
func objects(t *testing.T, srv *s3test.Server, bucket string) string {
	t.Helper()
	var names []string
	err := srv.Backend(t, bucket, "", s3.Options{}).List(context.Background(), "", func(o storage.ObjectInfo) error {
		names = append(names, o.Name)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(names, " ")
}
