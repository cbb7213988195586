// Package packaging holds the tests of what `make package` and `make image`
// build: the .deb installed and removed on this machine, the .rpm's header,
// the OCI image read back, and the systemd units' hardening. The builder
// itself is tools/packaging, a module of its own.
package packaging
