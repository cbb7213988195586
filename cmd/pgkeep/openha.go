package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"

	"google.golang.org/grpc/grpclog"

	"github.com/pgkeep/pgkeep/ha"
)

var quietGRPC sync.Once

// openHA connects to the configured etcd for the configured Patroni scope.
// The caller checks that etcd.endpoints is set.
func openHA(ctx context.Context, cfg Config, log *slog.Logger) (*ha.Client, error) {
	// gRPC prints its own errors to stderr; pgkeep reports one line itself.
	quietGRPC.Do(func() { grpclog.SetLoggerV2(grpclog.NewLoggerV2(io.Discard, io.Discard, io.Discard)) })
	e := cfg.Etcd
	var password string
	if e.PasswordFile != "" {
		data, err := os.ReadFile(e.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("etcd.password_file: %w", err)
		}
		pw := bytes.TrimRight(data, "\r\n")
		if len(pw) == 0 {
			return nil, &configError{fmt.Sprintf("etcd.password_file %s is empty", e.PasswordFile)}
		}
		password = string(pw)
	}
	return ha.Connect(ctx, ha.Options{
		Endpoints:   e.Endpoints,
		CAFile:      e.CACert,
		CertFile:    e.Cert,
		KeyFile:     e.Key,
		Username:    e.Username,
		Password:    password,
		DialTimeout: e.DialTimeout,
		Namespace:   cfg.Patroni.Namespace,
		Scope:       cfg.Patroni.Scope,
		Prefix:      e.Prefix,
		Logger:      log,
	})
}
