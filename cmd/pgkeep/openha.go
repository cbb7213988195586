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
	o, err := haOptions(cfg, log)
	if err != nil {
		return nil, err
	}
	return ha.Connect(ctx, o)
}

// haOptions is how to reach the configured etcd, its password read from
// etcd.password_file (an empty one is a configuration error).
func haOptions(cfg Config, log *slog.Logger) (ha.Options, error) {
	// gRPC prints its own errors to stderr; pgkeep reports one line itself.
	quietGRPC.Do(func() { grpclog.SetLoggerV2(grpclog.NewLoggerV2(io.Discard, io.Discard, io.Discard)) })
	e := cfg.Etcd
	var password string
	if e.PasswordFile != "" {
		data, err := os.ReadFile(e.PasswordFile)
		if err != nil {
			return ha.Options{}, fmt.Errorf("etcd.password_file: %w", err)
		}
		pw := bytes.TrimRight(data, "\r\n")
		if len(pw) == 0 {
			return ha.Options{}, &configError{fmt.Sprintf("etcd.password_file %s is empty", e.PasswordFile)}
		}
		password = string(pw)
	}
	return ha.Options{
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
	}, nil
}
