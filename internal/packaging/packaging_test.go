package packaging

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// root is the source tree (the directory of go.mod).
func root(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

var makeOnce sync.Map // target -> *makeResult

type makeResult struct {
	once sync.Once
	out  []byte
	err  error
}

// make runs `make target` in the source tree once per test process.
func runMake(t *testing.T, target string) {
	t.Helper()
	v, _ := makeOnce.LoadOrStore(target, &makeResult{})
	r := v.(*makeResult)
	r.once.Do(func() {
		cmd := exec.Command("make", "-s", target)
		cmd.Dir = root(t)
		r.out, r.err = cmd.CombinedOutput()
	})
	if r.err != nil {
		t.Fatalf("make %s: %v\n%s", target, r.err, r.out)
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// The .deb installs with apt-get on this Debian machine and brings the
// binary, the man pages, shell completion, the systemd units, the conffile
// and a postgres-owned /var/lib/pgkeep; it removes cleanly and leaves the
// repository directory alone.
func TestDebInstallsAndRemoves(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("installs a package: needs root")
	}
	for _, tool := range []string{"apt-get", "dpkg-query", "man", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is missing (scripts/install-deps.sh installs it)", tool)
		}
	}
	if err := exec.Command("dpkg-query", "-W", "pgkeep").Run(); err == nil {
		t.Skip("a pgkeep package is installed on this machine already; not touching it")
	}
	_, statErr := os.Stat("/var/lib/pgkeep")
	hadVarLib := statErr == nil
	runMake(t, "package")
	debs, _ := filepath.Glob(filepath.Join(root(t), "build", "pgkeep_*_amd64.deb"))
	if len(debs) != 1 {
		t.Fatalf("want one .deb in build/, got %v", debs)
	}
	apt := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("apt-get", append([]string{"-o", "DPkg::Lock::Timeout=300", "-y", "-q"}, args...)...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		cmd.Dir = root(t)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("apt-get %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	// As an operator would: apt-get install ./build/pgkeep_*.deb.
	apt("install", "--no-install-recommends", "./build/"+filepath.Base(debs[0]))
	removed := false
	t.Cleanup(func() {
		if !removed {
			exec.Command("apt-get", "-y", "-q", "purge", "pgkeep").Run()
		}
		if !hadVarLib {
			os.Remove("/var/lib/pgkeep") // only if empty: never a repository
		}
	})

	// The binary, on PATH, with its build facts.
	out := run(t, "/usr/bin/pgkeep", "version")
	for _, want := range []string{"pgkeep ", "commit: ", "go: go1.", "repository format: 1"} {
		if !strings.Contains(out, want) {
			t.Errorf("pgkeep version: %q lacks %q", out, want)
		}
	}
	if regexp.MustCompile(`commit: (unknown|)\n`).MatchString(out) {
		t.Errorf("pgkeep version names no commit: %q", out)
	}

	// man pgkeep-backup shows the page (rendered, not just present).
	if p := strings.TrimSpace(run(t, "man", "-w", "pgkeep-backup")); p != "/usr/share/man/man1/pgkeep-backup.1.gz" {
		t.Errorf("man -w pgkeep-backup: %q", p)
	}
	cmd := exec.Command("man", "pgkeep-backup")
	cmd.Env = append(os.Environ(), "MANPAGER=cat", "PAGER=cat", "MANWIDTH=100", "LANG=C.UTF-8")
	page, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(page), "pgkeep-backup") || !strings.Contains(string(page), "SYNOPSIS") ||
		!strings.Contains(string(page), "--config") {
		t.Errorf("man pgkeep-backup: %v\n%s", err, page)
	}

	// bash completion loads and completes subcommands.
	out = run(t, "bash", "-c", "source /usr/share/bash-completion/completions/pgkeep; complete -p pgkeep")
	if !strings.Contains(out, "__start_pgkeep") || !strings.HasSuffix(strings.TrimSpace(out), " pgkeep") {
		t.Errorf("complete -p pgkeep: %q", out)
	}
	out = run(t, "/usr/bin/pgkeep", "__complete", "backup", "")
	if !strings.Contains(out, "list") || !strings.Contains(out, "show") {
		t.Errorf("completion of `pgkeep backup `: %q", out)
	}
	for _, f := range []string{"/usr/share/zsh/vendor-completions/_pgkeep", "/usr/share/fish/vendor_completions.d/pgkeep.fish"} {
		if fi, err := os.Stat(f); err != nil || fi.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}

	// The units, running pgkeep as postgres, and the template.
	for _, u := range []string{"pgkeep-daemon.service", "pgkeep-daemon@.service"} {
		data, err := os.ReadFile("/lib/systemd/system/" + u)
		if err != nil {
			t.Fatalf("unit %s not installed: %v", u, err)
		}
		for _, want := range []string{"\nUser=postgres\n", "\nExecStart=/usr/bin/pgkeep daemon --config /etc/pgkeep/", "\nRestartPreventExitStatus=2\n"} {
			if !bytes.Contains(data, []byte(want)) {
				t.Errorf("%s lacks %q", u, want)
			}
		}
	}
	if _, err := exec.LookPath("systemd-analyze"); err == nil {
		// Now that /usr/bin/pgkeep and man:pgkeep-daemon(1) exist, the
		// unit verifies without a complaint.
		if out, err := exec.Command("systemd-analyze", "verify", "/lib/systemd/system/pgkeep-daemon.service").CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("systemd-analyze verify: %v\n%s", err, out)
		}
	}

	// The conffile, the examples, and the directories' owners.
	if out := run(t, "dpkg-query", "-W", "-f", "${Conffiles}", "pgkeep"); !strings.Contains(out, "/etc/pgkeep/pgkeep.yml") {
		t.Errorf("conffiles: %q", out)
	}
	if _, err := os.Stat("/usr/share/doc/pgkeep/examples/patroni.yml"); err != nil {
		t.Errorf("examples: %v", err)
	}
	if out := run(t, "stat", "-c", "%U %a", "/var/lib/pgkeep"); strings.TrimSpace(out) != "postgres 700" {
		t.Errorf("/var/lib/pgkeep: %q, want postgres 700", out)
	}
	if out := run(t, "stat", "-c", "%U:%G %a", "/etc/pgkeep"); strings.TrimSpace(out) != "root:postgres 750" {
		t.Errorf("/etc/pgkeep: %q, want root:postgres 750", out)
	}
	// The postgres user reads the installed configuration.
	out = run(t, "runuser", "-u", "postgres", "--", "/usr/bin/pgkeep", "config", "check")
	if !strings.Contains(out, "ok: settings from /etc/pgkeep/pgkeep.yml") {
		t.Errorf("config check as postgres: %q", out)
	}

	// Removal takes the files and keeps /var/lib/pgkeep (a repository may
	// live there).
	os.WriteFile("/var/lib/pgkeep/.pgkeep-packaging-test", nil, 0o600)
	apt("remove", "pgkeep")
	removed = true
	for _, f := range []string{"/usr/bin/pgkeep", "/lib/systemd/system/pgkeep-daemon.service", "/usr/share/man/man1/pgkeep-backup.1.gz", "/usr/share/bash-completion/completions/pgkeep"} {
		if _, err := os.Stat(f); err == nil {
			t.Errorf("%s left after apt-get remove", f)
		}
	}
	if _, err := os.Stat("/var/lib/pgkeep/.pgkeep-packaging-test"); err != nil {
		t.Errorf("apt-get remove touched /var/lib/pgkeep: %v", err)
	}
	os.Remove("/var/lib/pgkeep/.pgkeep-packaging-test")
	apt("purge", "pgkeep")
}

// The .rpm is built alongside, for the same contents.
func TestRPMBuilt(t *testing.T) {
	runMake(t, "package")
	rpms, _ := filepath.Glob(filepath.Join(root(t), "build", "pgkeep-*.x86_64.rpm"))
	if len(rpms) != 1 {
		t.Fatalf("want one .rpm in build/, got %v", rpms)
	}
	data, err := os.ReadFile(rpms[0])
	if err != nil {
		t.Fatal(err)
	}
	// The lead's magic, then the file list in the header.
	if !bytes.HasPrefix(data, []byte{0xed, 0xab, 0xee, 0xdb}) {
		t.Fatalf("%s is not an rpm", rpms[0])
	}
	for _, f := range []string{"pgkeep-daemon@.service", "pgkeep-backup.1.gz", "/usr/share/zsh/site-functions", "/usr/lib/systemd/system"} {
		if !bytes.Contains(data, []byte(f)) {
			t.Errorf("rpm header lacks %s", f)
		}
	}
}

// The image read back from its OCI layout: one manifest whose config runs
// /usr/bin/pgkeep, one layer whose digest matches and holds the binary,
// which prints its version when extracted and run.
func TestImage(t *testing.T) {
	runMake(t, "image")
	dir := filepath.Join(root(t), "build", "image-oci")
	blob := func(digest string) []byte {
		t.Helper()
		alg, hexd, ok := strings.Cut(digest, ":")
		if !ok || alg != "sha256" {
			t.Fatalf("digest %q", digest)
		}
		data, err := os.ReadFile(filepath.Join(dir, "blobs", "sha256", hexd))
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != hexd {
			t.Fatalf("blob %s does not match its digest", digest)
		}
		return data
	}
	type descriptor struct {
		MediaType   string            `json:"mediaType"`
		Digest      string            `json:"digest"`
		Size        int64             `json:"size"`
		Annotations map[string]string `json:"annotations"`
	}
	var layoutFile struct {
		Version string `json:"imageLayoutVersion"`
	}
	if data, err := os.ReadFile(filepath.Join(dir, "oci-layout")); err != nil || json.Unmarshal(data, &layoutFile) != nil || layoutFile.Version != "1.0.0" {
		t.Fatalf("oci-layout: %v %s", err, data)
	}
	var index struct {
		Manifests []descriptor `json:"manifests"`
	}
	data, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil || json.Unmarshal(data, &index) != nil || len(index.Manifests) != 1 {
		t.Fatalf("index.json: %v %s", err, data)
	}
	if ref := index.Manifests[0].Annotations["org.opencontainers.image.ref.name"]; !strings.HasPrefix(ref, "pgkeep:") {
		t.Errorf("ref.name %q", ref)
	}
	var manifest struct {
		Config descriptor   `json:"config"`
		Layers []descriptor `json:"layers"`
	}
	if err := json.Unmarshal(blob(index.Manifests[0].Digest), &manifest); err != nil {
		t.Fatal(err)
	}
	var config struct {
		OS, Architecture string
		Config           struct {
			Entrypoint []string
			Cmd        []string
		} `json:"config"`
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(blob(manifest.Config.Digest), &config); err != nil {
		t.Fatal(err)
	}
	if len(config.Config.Entrypoint) != 1 || config.Config.Entrypoint[0] != "/usr/bin/pgkeep" || config.OS != "linux" || config.Architecture != "amd64" {
		t.Fatalf("config: %+v", config)
	}
	// FROM scratch: one layer, nothing under it.
	if len(manifest.Layers) != 1 || len(config.RootFS.DiffIDs) != 1 {
		t.Fatalf("want one layer, got %d (%d diff_ids)", len(manifest.Layers), len(config.RootFS.DiffIDs))
	}
	zr, err := gzip.NewReader(bytes.NewReader(blob(manifest.Layers[0].Digest)))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if sum := sha256.Sum256(raw); "sha256:"+hex.EncodeToString(sum[:]) != config.RootFS.DiffIDs[0] {
		t.Fatalf("layer does not match its diff_id")
	}
	tr := tar.NewReader(bytes.NewReader(raw))
	var names []string
	bin := filepath.Join(t.TempDir(), "pgkeep")
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if h.Name == "usr/bin/pgkeep" {
			if h.Mode&0o111 == 0 || h.Uid != 0 {
				t.Errorf("usr/bin/pgkeep mode %o uid %d", h.Mode, h.Uid)
			}
			f, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(f, tr); err != nil {
				t.Fatal(err)
			}
			f.Close()
		}
	}
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "repository format: 1") {
		t.Fatalf("the image's pgkeep (layer %v): %v %s", names, err, out)
	}
	// Static: no interpreter (no libc in a scratch image).
	if out, _ := exec.Command("file", bin).CombinedOutput(); bytes.Contains(out, []byte("dynamically linked")) {
		t.Errorf("the binary is dynamically linked: %s", out)
	}

	// The docker/podman tarball holds the same image.
	f, err := os.Open(filepath.Join(root(t), "build", "pgkeep-image.tar"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr = tar.NewReader(f)
	var dm []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		if h.Name == "manifest.json" {
			json.NewDecoder(tr).Decode(&dm)
		}
	}
	if len(dm) != 1 || len(dm[0].Layers) != 1 || len(dm[0].RepoTags) != 1 || !strings.Contains(dm[0].Config, strings.TrimPrefix(manifest.Config.Digest, "sha256:")) {
		t.Fatalf("docker tarball manifest: %+v", dm)
	}
}

// Both units rate in systemd-analyze's OK band (exposure below 5.0) or
// better, offline, as shipped.
func TestUnitHardening(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze is missing (scripts/install-deps.sh installs systemd)")
	}
	dir := t.TempDir()
	for _, u := range []string{"pgkeep-daemon.service", "pgkeep-daemon@.service"} {
		src := filepath.Join(root(t), "configs", u)
		name := u
		if strings.Contains(u, "@") {
			name = "pgkeep-daemon@main.service" // an instance of the template
		}
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name)
		os.WriteFile(p, data, 0o644)
		out, _ := exec.Command("systemd-analyze", "security", "--offline=yes", p).CombinedOutput()
		m := regexp.MustCompile(`Overall exposure level for \S+: (\d+\.\d) (\w+)`).FindSubmatch(out)
		if m == nil {
			t.Fatalf("systemd-analyze security %s:\n%s", u, out)
		}
		score, _ := strconv.ParseFloat(string(m[1]), 64)
		band := string(m[2])
		t.Logf("%s: %.1f %s", u, score, band)
		if score >= 5 || (band != "OK" && band != "SAFE" && band != "PERFECT") {
			t.Errorf("%s rates %.1f %s, want the OK band or better", u, score, band)
		}
		if !bytes.Contains(data, []byte("\nRestartPreventExitStatus=2\n")) {
			t.Errorf("%s restarts on configuration errors (exit 2)", u)
		}
	}
}

// docs/cli.md is what `make docs` generates from the commands' help now.
func TestCLIReferenceCurrent(t *testing.T) {
	p := filepath.Join(t.TempDir(), "cli.md")
	cmd := exec.Command("go", "run", "-tags", "gendocs", "./cmd/pgkeep", "gen-docs", "--markdown", p)
	cmd.Dir = root(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gen-docs: %v\n%s", err, out)
	}
	want, _ := os.ReadFile(p)
	got, err := os.ReadFile(filepath.Join(root(t), "docs", "cli.md"))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("docs/cli.md is not what the commands say (%v): run make docs", err)
	}
}
