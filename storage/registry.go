package storage

import (
	"context"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"sync"
)

// Options are what Open passes on to a backend, and the wrappers it puts
// around any backend.
type Options struct {
	// Create makes a missing repository location where that means
	// something (a local directory, for repo init); otherwise a missing
	// one is an error wrapping ErrNotFound.
	Create bool
	// Params are backend settings by name, as the configuration spells
	// them within the backend's own section (s3: "endpoint", "region",
	// "path_style", …). Each backend parses the ones it knows into its own
	// config type and ignores the rest.
	Params map[string]string
	// RateLimit bounds object bytes a second through the backend, both
	// directions together (0: none). See RateLimited.
	RateLimit int64
	// MaxInFlight bounds the requests running at once (0: none). See
	// Limited.
	MaxInFlight int
	// Retries is how many times a failed request is tried again
	// (0: none; a backend may retry on its own, as s3 does). See Retrying.
	Retries int
}

// Opener opens the backend a URL of its scheme names.
type Opener func(ctx context.Context, u *url.URL, o Options) (Backend, error)

var (
	registryMu sync.RWMutex
	registry   = map[string]Opener{}
)

// Register makes Open hand URLs with scheme to open. A backend package
// calls it from init(), so linking the package in (a blank import in the
// program's main package) is all it takes to support a new store.
// Registering a scheme twice panics: it is a programming error.
func Register(scheme string, open Opener) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := registry[scheme]; dup {
		panic("storage: scheme " + scheme + " registered twice")
	}
	registry[scheme] = open
}

// Schemes lists the registered schemes, sorted.
func Schemes() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	s := make([]string, 0, len(registry))
	for k := range registry {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}

// Open opens the backend rawURL names with the opener registered for its
// scheme, then wraps it in the retry, concurrency and rate limits o asks
// for (innermost first: a retried request takes a slot and pays for its
// bytes again).
func Open(ctx context.Context, rawURL string, o Options) (Backend, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("repository %q: %w", rawURL, err)
	}
	registryMu.RLock()
	open, ok := registry[u.Scheme]
	registryMu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("repository %q: unsupported scheme %q (%s)", rawURL, u.Scheme, strings.Join(Schemes(), " or "))
	}
	b, err := open(ctx, u, o)
	if err != nil {
		return nil, err
	}
	b = Retrying(b, o.Retries)
	b = Limited(b, o.MaxInFlight)
	return RateLimited(b, o.RateLimit), nil
}

// urlCheck is what a backend tells about its URLs before anything is
// opened: how to check one, and an example for messages.
type urlCheck struct {
	example string
	check   func(*url.URL) error
}

var urlChecks = map[string]urlCheck{}

// RegisterURLCheck lets a backend's URLs be checked at configuration load
// (CheckURL), so a wrong one is a configuration error before anything is
// opened. example is a URL of the scheme as messages show it
// ("s3://bucket/prefix").
func RegisterURLCheck(scheme, example string, check func(*url.URL) error) {
	registryMu.Lock()
	defer registryMu.Unlock()
	urlChecks[scheme] = urlCheck{example: example, check: check}
}

// CheckURL refuses a repository URL no registered backend can open, or
// one its backend's check refuses.
func CheckURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%q is not a URL", raw)
	}
	registryMu.RLock()
	c, checked := urlChecks[u.Scheme]
	_, known := registry[u.Scheme]
	var examples []string
	for _, s := range sortedKeys(urlChecks) {
		examples = append(examples, urlChecks[s].example)
	}
	registryMu.RUnlock()
	if !known {
		return fmt.Errorf("%q is not a %s URL", raw, strings.Join(examples, " or "))
	}
	if checked {
		return c.check(u)
	}
	return nil
}

func sortedKeys(m map[string]urlCheck) []string {
	k := make([]string, 0, len(m))
	for s := range m {
		k = append(k, s)
	}
	sort.Strings(k)
	return k
}
