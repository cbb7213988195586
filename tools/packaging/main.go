// Command packaging builds pgkeep's .deb and .rpm packages (nfpm as a
// library) and its OCI image (go-containerregistry, FROM scratch), with no
// prebuilt tool, container daemon or registry. The Makefile runs it:
//
//	go run . package -root ../.. -version v1.2.3 -out ../../build
//	go run . image   -root ../.. -version v1.2.3 -out ../../build
//
// It is a module of its own so that nfpm's and go-containerregistry's
// dependencies stay out of pgkeep's go.mod.
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb"
	"github.com/goreleaser/nfpm/v2/files"
	_ "github.com/goreleaser/nfpm/v2/rpm"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: packaging package|image -root DIR -version V -out DIR")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	var o options
	fs.StringVar(&o.root, "root", "../..", "pgkeep's source tree, with bin/pgkeep and build/man, build/completion")
	fs.StringVar(&o.version, "version", "dev", "version (git describe)")
	fs.StringVar(&o.out, "out", "../../build", "output directory")
	fs.StringVar(&o.formats, "formats", "deb,rpm", "package formats")
	fs.Parse(os.Args[2:])
	var err error
	switch os.Args[1] {
	case "package":
		err = buildPackages(o)
	case "image":
		err = buildImage(o)
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		slog.Error(strings.ReplaceAll(err.Error(), "\n", "; "))
		os.Exit(1)
	}
}

type options struct {
	root, version, out, formats string
}

func (o options) path(p string) string { return filepath.Join(o.root, p) }

// mtime is every file's time in packages and the image: SOURCE_DATE_EPOCH
// when set, else the Unix epoch, so that builds are reproducible.
func mtime() time.Time {
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		var n int64
		if _, err := fmt.Sscan(s, &n); err == nil {
			return time.Unix(n, 0).UTC()
		}
	}
	return time.Unix(0, 0).UTC()
}

// pkgVersion turns `git describe` output into a version deb and rpm both
// order sensibly: v1.2.3 -> 1.2.3, v1.2.3-4-gabc -> 1.2.3+4.gabc,
// 53401f0 -> 0.0.0+git53401f0.
func pkgVersion(v string) string {
	v = strings.TrimPrefix(v, "v")
	if v == "" || v[0] < '0' || v[0] > '9' {
		v = "0.0.0+git" + v
	}
	v = regexp.MustCompile(`[^A-Za-z0-9.+~]`).ReplaceAllString(strings.Replace(v, "-", "+", 1), ".")
	return v
}

const (
	postinstall = `#!/bin/sh
# pgkeep postinstall: the default repository directory belongs to the
# PostgreSQL user, which runs archive_command and the daemon.
set -e
if id postgres >/dev/null 2>&1; then
	install -d -o postgres -g postgres -m 0700 /var/lib/pgkeep
	chgrp postgres /etc/pgkeep && chmod 0750 /etc/pgkeep
else
	install -d -m 0700 /var/lib/pgkeep
	echo "pgkeep: no postgres user yet; once PostgreSQL is installed: chown postgres:postgres /var/lib/pgkeep; chgrp postgres /etc/pgkeep" >&2
fi
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
`
	preremove = `#!/bin/sh
# pgkeep preremove: stop the daemons on removal, not on upgrade (deb passes
# "remove", rpm 0). The repository in /var/lib/pgkeep is never removed.
set -e
case "$1" in
remove|0)
	if [ -d /run/systemd/system ]; then
		systemctl --no-reload disable --now pgkeep-daemon.service >/dev/null 2>&1 || true
		systemctl stop 'pgkeep-daemon@*.service' >/dev/null 2>&1 || true
	fi
	;;
esac
exit 0
`
	postremove = `#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
`
)

// contents lists the package's files for one format.
func contents(o options, format, work string) (files.Contents, error) {
	t := mtime()
	fi := func(mode os.FileMode) *files.ContentFileInfo {
		return &files.ContentFileInfo{Owner: "root", Group: "root", Mode: mode, MTime: t}
	}
	unitDir, zshDir := "/lib/systemd/system", "/usr/share/zsh/vendor-completions"
	if format == "rpm" {
		unitDir, zshDir = "/usr/lib/systemd/system", "/usr/share/zsh/site-functions"
	}
	c := files.Contents{
		{Source: o.path("bin/pgkeep"), Destination: "/usr/bin/pgkeep", FileInfo: fi(0o755)},
		{Source: o.path("build/completion/pgkeep.bash"), Destination: "/usr/share/bash-completion/completions/pgkeep", FileInfo: fi(0o644)},
		{Source: o.path("build/completion/_pgkeep"), Destination: zshDir + "/_pgkeep", FileInfo: fi(0o644)},
		{Source: o.path("build/completion/pgkeep.fish"), Destination: "/usr/share/fish/vendor_completions.d/pgkeep.fish", FileInfo: fi(0o644)},
		{Source: o.path("configs/pgkeep-daemon.service"), Destination: unitDir + "/pgkeep-daemon.service", FileInfo: fi(0o644)},
		{Source: o.path("configs/pgkeep-daemon@.service"), Destination: unitDir + "/pgkeep-daemon@.service", FileInfo: fi(0o644)},
		// The one file pgkeep reads by default: a conffile, kept on
		// upgrade and on removal when changed.
		{Source: o.path("configs/pgkeep.yml"), Destination: "/etc/pgkeep/pgkeep.yml", Type: files.TypeConfigNoReplace, FileInfo: fi(0o644)},
		{Destination: "/etc/pgkeep", Type: files.TypeDir, FileInfo: fi(0o750)},
		{Source: o.path("README.md"), Destination: "/usr/share/doc/pgkeep/README.md", FileInfo: fi(0o644)},
	}
	// Every example (the Patroni, postgresql.conf and alert snippets too)
	// under the doc directory, where copying one is a deliberate act.
	examples, err := filepath.Glob(o.path("configs/*"))
	if err != nil {
		return nil, err
	}
	for _, e := range examples {
		c = append(c, &files.Content{Source: e, Destination: "/usr/share/doc/pgkeep/examples/" + filepath.Base(e), FileInfo: fi(0o644)})
	}
	// Man pages, gzipped as Debian's policy asks (man reads both).
	pages, err := filepath.Glob(o.path("build/man/*.1"))
	if err != nil || len(pages) == 0 {
		return nil, fmt.Errorf("no man pages in %s (make man)", o.path("build/man"))
	}
	gzDir := filepath.Join(work, "man")
	if err := os.MkdirAll(gzDir, 0o755); err != nil {
		return nil, err
	}
	for _, p := range pages {
		gz := filepath.Join(gzDir, filepath.Base(p)+".gz")
		if err := gzipFile(p, gz, t); err != nil {
			return nil, fmt.Errorf("man page %s: %w", p, err)
		}
		c = append(c, &files.Content{Source: gz, Destination: "/usr/share/man/man1/" + filepath.Base(gz), FileInfo: fi(0o644)})
	}
	for _, f := range c {
		if f.Source == "" {
			continue
		}
		if _, err := os.Stat(f.Source); err != nil {
			return nil, fmt.Errorf("package content: %w", err)
		}
	}
	return c, nil
}

func gzipFile(src, dst string, t time.Time) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	zw.ModTime = t
	zw.Name = filepath.Base(src)
	if _, err := zw.Write(data); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return os.WriteFile(dst, buf.Bytes(), 0o644)
}

func buildPackages(o options) error {
	work, err := os.MkdirTemp("", "pgkeep-package-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	scripts := map[string]string{"postinstall": postinstall, "preremove": preremove, "postremove": postremove}
	for n, s := range scripts {
		if err := os.WriteFile(filepath.Join(work, n), []byte(s), 0o755); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	for _, format := range strings.Split(o.formats, ",") {
		c, err := contents(o, format, work)
		if err != nil {
			return err
		}
		info := &nfpm.Info{
			Name:          "pgkeep",
			Arch:          "amd64",
			Platform:      "linux",
			Version:       pkgVersion(o.version),
			VersionSchema: "none",
			Release:       "1",
			Section:       "database",
			Priority:      "optional",
			Maintainer:    "pgkeep developers <pgkeep@users.noreply.github.com>",
			Description: "WAL archiving, backups and point-in-time recovery for PostgreSQL and Patroni\n" +
				"pgkeep is PostgreSQL's archive_command and restore_command, takes and restores\n" +
				"compressed, encrypted base backups in a local directory or S3, provisions\n" +
				"Patroni replicas from its repository and schedules backups on the right member.",
			Vendor:   "pgkeep",
			Homepage: "https://github.com/pgkeep/pgkeep",
			MTime:    mtime(),
			Overridables: nfpm.Overridables{
				Contents:   c,
				Recommends: []string{"postgresql"},
				Suggests:   []string{"patroni"},
				Scripts: nfpm.Scripts{
					PostInstall: filepath.Join(work, "postinstall"),
					PreRemove:   filepath.Join(work, "preremove"),
					PostRemove:  filepath.Join(work, "postremove"),
				},
				RPM: nfpm.RPM{Group: "Applications/Databases", Summary: "WAL archiving, backups and PITR for PostgreSQL and Patroni", Compression: "zstd", BuildHost: "pgkeep"},
				Deb: nfpm.Deb{Compression: "gzip"},
			},
		}
		info = nfpm.WithDefaults(info)
		pkg, err := nfpm.Get(format)
		if err != nil {
			return fmt.Errorf("%s: %w", format, err)
		}
		target := filepath.Join(o.out, pkg.ConventionalFileName(info))
		f, err := os.Create(target)
		if err != nil {
			return fmt.Errorf("%s: %w", format, err)
		}
		info.Target = target
		if err := pkg.Package(info, f); err != nil {
			f.Close()
			os.Remove(target)
			return fmt.Errorf("%s package: %w", format, err)
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("%s package: %w", format, err)
		}
		fmt.Println(target)
	}
	return nil
}

// buildImage writes an image FROM scratch: one layer holding
// /usr/bin/pgkeep (and the build host's CA bundle, which S3 over TLS
// needs), as an OCI layout (build/image-oci) and a docker/podman tarball
// (build/pgkeep-image.tar, for `docker load` / `podman load`).
func buildImage(o options) error {
	t := mtime()
	bin, err := os.ReadFile(o.path("bin/pgkeep"))
	if err != nil {
		return fmt.Errorf("image: %w (make build)", err)
	}
	entries := []tarEntry{
		{name: "etc/", dir: true}, {name: "etc/ssl/", dir: true}, {name: "etc/ssl/certs/", dir: true},
		{name: "tmp/", dir: true, mode: 0o1777},
		{name: "usr/", dir: true}, {name: "usr/bin/", dir: true},
		{name: "usr/bin/pgkeep", data: bin, mode: 0o755},
	}
	if ca, err := os.ReadFile("/etc/ssl/certs/ca-certificates.crt"); err == nil {
		entries = append(entries, tarEntry{name: "etc/ssl/certs/ca-certificates.crt", data: ca, mode: 0o644})
	}
	layerTar, err := tarOf(entries, t)
	if err != nil {
		return fmt.Errorf("image layer: %w", err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return fmt.Errorf("image layer: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return fmt.Errorf("image: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("image config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Created = v1.Time{Time: t}
	cf.Config.Entrypoint = []string{"/usr/bin/pgkeep"}
	cf.Config.Cmd = []string{"--help"}
	cf.Config.Env = []string{"PATH=/usr/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"}
	cf.Config.WorkingDir = "/"
	cf.Config.Labels = map[string]string{
		"org.opencontainers.image.title":   "pgkeep",
		"org.opencontainers.image.version": o.version,
		"org.opencontainers.image.source":  "https://github.com/pgkeep/pgkeep",
	}
	cf.History = []v1.History{{Created: v1.Time{Time: t}, CreatedBy: "pgkeep tools/packaging: /usr/bin/pgkeep", Comment: "FROM scratch"}}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return fmt.Errorf("image config: %w", err)
	}
	img, err = mutate.CreatedAt(img, v1.Time{Time: t})
	if err != nil {
		return fmt.Errorf("image: %w", err)
	}
	tag := "pgkeep:" + regexp.MustCompile(`[^A-Za-z0-9_.-]`).ReplaceAllString(o.version, "_")
	dir := filepath.Join(o.out, "image-oci")
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("oci layout: %w", err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag})); err != nil {
		return fmt.Errorf("oci layout: %w", err)
	}
	ref, err := name.NewTag(tag, name.WithDefaultRegistry("localhost"))
	if err != nil {
		return fmt.Errorf("image tag: %w", err)
	}
	tarPath := filepath.Join(o.out, "pgkeep-image.tar")
	if err := tarball.WriteToFile(tarPath, ref, img); err != nil {
		return fmt.Errorf("image tarball: %w", err)
	}
	d, _ := img.Digest()
	fmt.Printf("%s\n%s (%s, %s)\n", dir, tarPath, tag, d)
	return nil
}

type tarEntry struct {
	name string
	data []byte
	mode int64
	dir  bool
}

func tarOf(entries []tarEntry, t time.Time) ([]byte, error) {
	sort.SliceStable(entries, func(i, j int) bool { return entries[i].name < entries[j].name })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: e.mode, ModTime: t, Format: tar.FormatPAX, Uname: "root", Gname: "root"}
		if e.dir {
			h.Typeflag = tar.TypeDir
			if h.Mode == 0 {
				h.Mode = 0o755
			}
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
