// Package ha reads a Patroni cluster the way Patroni 3 writes it to etcd (v3
// API) and provides small lease-backed locks and JSON records that pgkeep's
// scheduler uses to run a job on exactly one node.
//
// Patroni keeps everything of a cluster under <namespace>/<scope>/ (by
// default /service/<scope>/): leader, members/<name>, status, config,
// initialize, history, sync, failover. pgkeep writes only under its own
// prefix, by default <namespace>/pgkeep/<scope>/ (locks/ and records/):
// outside Patroni's, which `patronictl remove` deletes whole.
//
// The package never reads configuration files or the environment; the
// caller passes Options. Passwords are never logged nor put in errors.
package ha

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// DefaultNamespace is Patroni's default namespace.
const DefaultNamespace = "/service/"

// DefaultDialTimeout is used when Options.DialTimeout is zero.
const DefaultDialTimeout = 5 * time.Second

// Options say how to reach etcd and which Patroni cluster to read.
type Options struct {
	// Endpoints are etcd client URLs (https://10.0.0.1:2379) or host:port
	// pairs; host:port means https when TLS files are set, else http.
	Endpoints []string
	// CAFile verifies the servers' certificates (PEM); empty means the
	// system roots. CertFile and KeyFile are a client certificate (PEM),
	// both or neither.
	CAFile, CertFile, KeyFile string
	// Username and Password for etcd authentication; both or neither.
	Username, Password string
	// DialTimeout bounds connecting and authenticating (default 5s).
	DialTimeout time.Duration
	// RequestTimeout bounds each request to etcd (default DialTimeout).
	RequestTimeout time.Duration
	// Namespace and Scope are Patroni's namespace (default "/service/") and
	// scope (the cluster name, required).
	Namespace, Scope string
	// Identity names this process in locks it takes (default: host name).
	Identity string
	// Prefix is where pgkeep keeps its locks and records (default
	// <namespace>pgkeep/<scope>, e.g. /service/pgkeep/main): outside
	// Patroni's <namespace><scope>/, which `patronictl remove` deletes
	// whole. Earlier versions kept them under <namespace><scope>/pgkeep/;
	// MigrateRecords moves them.
	Prefix string
	// Logger receives debug and warning messages (default: discarded).
	Logger *slog.Logger
}

// Client is a connection to etcd bound to one Patroni cluster.
type Client struct {
	cli      *clientv3.Client
	base     string // "/service/scope", no trailing slash
	own      string // pgkeep's prefix, "/service/pgkeep/scope", no trailing slash
	eps      []string
	tls      *tls.Config
	user     string
	timeout  time.Duration
	identity string
	log      *slog.Logger
	hookMu   sync.Mutex
	onLost   func(name string)
}

var (
	// ErrLocked is returned (wrapped in a *LockedError) by TryLock when
	// another holder has the lock.
	ErrLocked = errors.New("lock is held")
	// ErrNoCluster is returned by View when etcd holds no key of the
	// Patroni cluster (wrong scope or namespace, or not bootstrapped yet).
	ErrNoCluster = errors.New("no Patroni cluster")
	// ErrAuth is wrapped by errors from a wrong user name or password.
	ErrAuth = errors.New("authentication failed")
	// ErrUnavailable is wrapped by errors from etcd not answering in time.
	ErrUnavailable = errors.New("etcd unavailable")
)

// Connect checks the options and connects. With a user name it also
// authenticates, so a wrong password fails here; otherwise an unreachable
// etcd shows in the first request. Connecting and authenticating are
// bounded by DialTimeout, not by ctx; the client outlives ctx until Close.
func Connect(ctx context.Context, o Options) (*Client, error) {
	if len(o.Endpoints) == 0 {
		return nil, errors.New("etcd: no endpoints")
	}
	if o.Scope == "" {
		return nil, errors.New("etcd: no Patroni scope")
	}
	if (o.Username == "") != (o.Password == "") {
		return nil, errors.New("etcd: user name and password go together")
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		return nil, errors.New("etcd: client certificate and key go together")
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = o.DialTimeout
	}
	if o.Namespace == "" {
		o.Namespace = DefaultNamespace
	}
	if o.Identity == "" {
		o.Identity, _ = os.Hostname()
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	c := &Client{
		base:     BasePath(o.Namespace, o.Scope),
		own:      OwnPath(o.Namespace, o.Scope, o.Prefix),
		user:     o.Username,
		timeout:  o.RequestTimeout,
		identity: o.Identity,
		log:      o.Logger,
	}
	wantTLS := o.CAFile != "" || o.CertFile != ""
	for _, ep := range o.Endpoints {
		n, err := normalizeEndpoint(ep, wantTLS)
		if err != nil {
			return nil, err
		}
		wantTLS = wantTLS || strings.HasPrefix(n, "https://")
		c.eps = append(c.eps, n)
	}
	if wantTLS {
		for _, ep := range c.eps {
			if strings.HasPrefix(ep, "http://") {
				return nil, fmt.Errorf("etcd endpoint %s: http:// mixed with TLS (https:// endpoints or certificate files)", ep)
			}
		}
		t, err := tlsConfig(o)
		if err != nil {
			return nil, err
		}
		c.tls = t
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   c.eps,
		DialTimeout: o.DialTimeout,
		TLS:         c.tls,
		Username:    o.Username,
		Password:    o.Password,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, c.fail(ctx, "connect", o.DialTimeout, err)
	}
	c.cli = cli
	return c, nil
}

// BasePath is where Patroni keeps a cluster's keys: namespace and scope
// joined with single slashes, as Patroni does ("/service/" + "demo" ->
// "/service/demo").
func BasePath(namespace, scope string) string {
	return slashes.ReplaceAllString("/"+namespace+"/"+scope, "/")
}

var slashes = regexp.MustCompile(`/+`)

// OwnPath is where pgkeep keeps a cluster's locks and records: prefix
// when set, else <namespace>pgkeep/<scope> ("/service/pgkeep/demo").
func OwnPath(namespace, scope, prefix string) string {
	if prefix == "" {
		prefix = "/" + namespace + "/pgkeep/" + scope
	}
	return strings.TrimSuffix(slashes.ReplaceAllString("/"+prefix, "/"), "/")
}

// Prefix is the cluster's key prefix, e.g. "/service/demo/".
func (c *Client) Prefix() string { return c.base + "/" }

// Endpoints are the etcd URLs in use.
func (c *Client) Endpoints() []string { return append([]string(nil), c.eps...) }

// Close ends the connection. Locks still held are released by etcd when
// their leases expire.
func (c *Client) Close() error { return c.cli.Close() }

func normalizeEndpoint(ep string, tlsDefault bool) (string, error) {
	ep = strings.TrimSpace(ep)
	if !strings.Contains(ep, "://") {
		scheme := "http://"
		if tlsDefault {
			scheme = "https://"
		}
		ep = scheme + ep
	}
	u, err := url.Parse(ep)
	if err != nil || u.Host == "" {
		// Not echoed in full: a mistyped URL may hold a password.
		return "", errors.New("etcd endpoint: not a URL or host:port (e.g. https://10.0.0.1:2379)")
	}
	if u.User != nil {
		return "", fmt.Errorf("etcd endpoint %s: must not contain credentials (use a user name and password file)", u.Host)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("etcd endpoint %s: scheme %q is not http or https", u.Host, u.Scheme)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		return "", fmt.Errorf("etcd endpoint %s: must be scheme://host:port without a path", u.Host)
	}
	if u.Port() == "" {
		u.Host = net.JoinHostPort(u.Hostname(), "2379")
	}
	return u.Scheme + "://" + u.Host, nil
}

func tlsConfig(o Options) (*tls.Config, error) {
	t := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("etcd CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcd CA file %s: no PEM certificate in it", o.CAFile)
		}
		t.RootCAs = pool
	}
	if o.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			// LoadX509KeyPair's errors name no key material.
			return nil, fmt.Errorf("etcd client certificate %s / key %s: %w", o.CertFile, o.KeyFile, err)
		}
		t.Certificates = []tls.Certificate{cert}
	}
	return t, nil
}

// request bounds one etcd request by the request timeout.
func (c *Client) request(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.timeout)
}

// fail turns an etcd client error into one line naming the endpoints, the
// operation and the cause. It never includes the password.
func (c *Client) fail(ctx context.Context, op string, timeout time.Duration, err error) error {
	where := "etcd " + strings.Join(c.eps, ",")
	switch {
	case errors.Is(err, rpctypes.ErrAuthFailed):
		return fmt.Errorf("%s: %s: %w for user %q (wrong user name or password)", where, op, ErrAuth, c.user)
	case errors.Is(err, rpctypes.ErrUserEmpty), errors.Is(err, rpctypes.ErrInvalidAuthToken), errors.Is(err, rpctypes.ErrInvalidAuthMgmt):
		if c.user == "" {
			return fmt.Errorf("%s: %s: etcd requires authentication, no user name is set", where, op)
		}
		return fmt.Errorf("%s: %s: %w", where, op, err)
	case errors.Is(err, rpctypes.ErrPermissionDenied):
		return fmt.Errorf("%s: %s: permission denied for user %q", where, op, c.user)
	case ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("%s: %s: %w", where, op, ctx.Err())
	case isTimeout(err):
		msg := fmt.Sprintf("no answer within %s", timeout)
		if d := c.diagnose(); d != "" {
			msg += " (" + d + ")"
		}
		return fmt.Errorf("%s: %s: %w: %s", where, op, ErrUnavailable, msg)
	}
	return fmt.Errorf("%s: %s: %w", where, op, err)
}

func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, rpctypes.ErrTimeout) ||
		errors.Is(err, rpctypes.ErrGRPCTimeout) || errors.Is(err, rpctypes.ErrNoLeader) {
		return true
	}
	if s, ok := status.FromError(err); ok {
		return s.Code() == codes.DeadlineExceeded || s.Code() == codes.Unavailable
	}
	return false
}

// diagnose says why no endpoint answered, from a plain TCP (and TLS)
// connection to each: the gRPC client only reports the deadline.
func (c *Client) diagnose() string {
	errs := make([]error, len(c.eps))
	var wg sync.WaitGroup
	for i, ep := range c.eps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.probe(ep)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err.Error()
		}
	}
	return ""
}

func (c *Client) probe(ep string) error {
	u, err := url.Parse(ep)
	if err != nil {
		return err
	}
	conn, err := net.DialTimeout("tcp", u.Host, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	if u.Scheme != "https" || c.tls == nil {
		return nil
	}
	t := c.tls.Clone()
	t.ServerName = u.Hostname()
	t.NextProtos = []string{"h2"}
	tc := tls.Client(conn, t)
	tc.SetDeadline(time.Now().Add(time.Second))
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("%s: %w", u.Host, err)
	}
	// A server that rejects the client certificate says so after the
	// handshake (TLS 1.3); a healthy one stays silent until spoken to.
	tc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	var b [1]byte
	if _, err := tc.Read(b[:]); err != nil {
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("%s: server closed the TLS connection", u.Host)
			}
			return fmt.Errorf("%s: %w", u.Host, err)
		}
	}
	return nil
}
