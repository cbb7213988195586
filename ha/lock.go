package ha

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Lock is a key held under an etcd lease: it exists while the holder keeps
// the lease alive and disappears with the lease, so a holder that dies or
// loses etcd frees it after at most the TTL.
type Lock struct {
	c      *Client
	key    string // relative name
	path   string // etcd key
	lease  clientv3.LeaseID
	stopKA context.CancelFunc
	lost   chan struct{}
	once   sync.Once
}

// LockedError is TryLock's answer when someone else holds the lock.
type LockedError struct {
	Key    string
	Holder string // the holder's identity, "" if unknown
	Since  time.Time
}

func (e *LockedError) Error() string {
	if e.Holder == "" {
		return fmt.Sprintf("lock %s is held", e.Key)
	}
	return fmt.Sprintf("lock %s is held by %s since %s", e.Key, e.Holder, e.Since.Format(time.RFC3339))
}

// Is makes errors.Is(err, ErrLocked) true.
func (e *LockedError) Is(target error) bool { return target == ErrLocked }

// lockValue is stored in the lock key for humans and LockedError.
type lockValue struct {
	Holder   string    `json:"holder"`
	Acquired time.Time `json:"acquired"`
}

// LockKey is the etcd key of the named lock.
func (c *Client) LockKey(name string) string { return c.own + "/locks/" + name }

// RecordKey is the etcd key of the named record.
func (c *Client) RecordKey(name string) string { return c.own + "/records/" + name }

// legacyRecords is where earlier versions kept records: inside
// Patroni's prefix, deleted by `patronictl remove`.
func (c *Client) legacyRecords() string { return c.base + "/pgkeep/records/" }

// MigrateRecords moves records from the old location under Patroni's
// prefix (<namespace><scope>/pgkeep/records/) to RecordKey's, each in one
// transaction that keeps a record already at the new location, and
// returns how many it moved. Old locks are left to expire with their
// leases.
func (c *Client) MigrateRecords(ctx context.Context) (int, error) {
	old := c.legacyRecords()
	rctx, cancel := c.request(ctx)
	resp, err := c.cli.Get(rctx, old, clientv3.WithPrefix(), clientv3.WithLimit(10000))
	cancel()
	if err != nil {
		return 0, c.fail(ctx, "list old records "+old, c.timeout, err)
	}
	moved := 0
	for _, kv := range resp.Kvs {
		name := strings.TrimPrefix(string(kv.Key), old)
		if checkName(name) != nil {
			continue
		}
		nk := c.RecordKey(name)
		rctx, cancel := c.request(ctx)
		_, err := c.cli.Txn(rctx).
			If(clientv3.Compare(clientv3.CreateRevision(nk), "=", 0)).
			Then(clientv3.OpPut(nk, string(kv.Value)), clientv3.OpDelete(string(kv.Key))).
			Else(clientv3.OpDelete(string(kv.Key))).
			Commit()
		cancel()
		if err != nil {
			return moved, c.fail(ctx, "move record "+name, c.timeout, err)
		}
		moved++
	}
	return moved, nil
}

func checkName(name string) error {
	if name == "" || strings.HasPrefix(name, "/") || strings.HasSuffix(name, "/") || strings.Contains(name, "//") {
		return fmt.Errorf("ha: bad key name %q (non-empty, relative, no empty path parts)", name)
	}
	return nil
}

// TryLock takes the named lock for ttl (rounded up to whole seconds; etcd
// may raise very short TTLs to its minimum) or returns a *LockedError
// (errors.Is(err, ErrLocked)) at once when another holder has it. The lock
// is kept alive in the background until Release, or until etcd cannot be
// reached for about ttl; Lost says when either happened.
func (c *Client) TryLock(ctx context.Context, name string, ttl time.Duration) (*Lock, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	secs := int64((ttl + time.Second - 1) / time.Second)
	if secs < 1 {
		secs = 1
	}
	op := "lock " + name
	rctx, cancel := c.request(ctx)
	defer cancel()
	grant, err := c.cli.Grant(rctx, secs)
	if err != nil {
		return nil, c.fail(ctx, op+": grant lease", c.timeout, err)
	}
	path := c.LockKey(name)
	val, _ := json.Marshal(lockValue{Holder: c.identity, Acquired: time.Now().UTC().Truncate(time.Second)})
	resp, err := c.cli.Txn(rctx).
		If(clientv3.Compare(clientv3.CreateRevision(path), "=", 0)).
		Then(clientv3.OpPut(path, string(val), clientv3.WithLease(grant.ID))).
		Else(clientv3.OpGet(path)).
		Commit()
	if err != nil {
		// Whether or not the put happened, revoking the lease undoes it.
		c.revoke(grant.ID)
		return nil, c.fail(ctx, op, c.timeout, err)
	}
	if !resp.Succeeded {
		c.revoke(grant.ID)
		le := &LockedError{Key: name}
		if rr := resp.Responses[0].GetResponseRange(); rr != nil && len(rr.Kvs) > 0 {
			var v lockValue
			if json.Unmarshal(rr.Kvs[0].Value, &v) == nil {
				le.Holder, le.Since = v.Holder, v.Acquired
			}
		}
		return nil, le
	}
	kaCtx, stop := context.WithCancel(context.Background())
	ch, err := c.cli.KeepAlive(kaCtx, grant.ID)
	if err != nil {
		stop()
		c.revoke(grant.ID)
		return nil, c.fail(ctx, op+": keep lease alive", c.timeout, err)
	}
	l := &Lock{c: c, key: name, path: path, lease: grant.ID, stopKA: stop, lost: make(chan struct{})}
	go func() {
		for range ch {
		}
		// The channel closes on Release, when the lease is gone, or when
		// etcd did not answer keepalives for the TTL.
		if kaCtx.Err() == nil {
			// The hook first, so that whatever it updates (metrics,
			// health) is already true when the log says so.
			if h := c.lockLostHook(); h != nil {
				h(name)
			}
			c.log.Warn("lock lost", "lock", name)
		}
		close(l.lost)
	}()
	c.log.Debug("lock taken", "lock", name, "ttl_seconds", grant.TTL)
	return l, nil
}

// SetLockLostHook makes f run, with the lock's name, whenever a lock of
// this client is lost (not released): before "lock lost" is logged and
// before Lost is closed.
func (c *Client) SetLockLostHook(f func(name string)) {
	c.hookMu.Lock()
	defer c.hookMu.Unlock()
	c.onLost = f
}

func (c *Client) lockLostHook() func(string) {
	c.hookMu.Lock()
	defer c.hookMu.Unlock()
	return c.onLost
}

// revoke drops a lease (and the keys attached to it), best effort.
func (c *Client) revoke(id clientv3.LeaseID) error {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	_, err := c.cli.Revoke(ctx, id)
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return nil
	}
	return err
}

// Key is the lock's name as given to TryLock.
func (l *Lock) Key() string { return l.key }

// Lost is closed when the lock is no longer held: after Release, when the
// lease expired or was revoked, or when keepalives failed for the TTL. A
// job holding the lock should stop when it is closed.
func (l *Lock) Lost() <-chan struct{} { return l.lost }

// Release stops the keepalive and deletes the lock by revoking its lease.
// Releasing twice, or after the lease expired, is not an error.
func (l *Lock) Release(ctx context.Context) error {
	var err error
	l.once.Do(func() {
		l.stopKA()
		if e := l.c.revoke(l.lease); e != nil {
			err = l.c.fail(ctx, "unlock "+l.key, l.c.timeout, e)
		}
		<-l.lost
	})
	return err
}

// recordValue checks a record's name and encodes its value.
func recordValue(name string, v any) ([]byte, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	data, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("record %s: %w", name, err)
	}
	return data, nil
}

// Put stores v as JSON in the named record (overwriting it).
func (c *Client) Put(ctx context.Context, name string, v any) error {
	data, err := recordValue(name, v)
	if err != nil {
		return err
	}
	rctx, cancel := c.request(ctx)
	defer cancel()
	if _, err := c.cli.Put(rctx, c.RecordKey(name), string(data)); err != nil {
		return c.fail(ctx, "write record "+name, c.timeout, err)
	}
	return nil
}

// Get reads the named record into v; found is false (and v untouched) when
// there is no such record.
func (c *Client) Get(ctx context.Context, name string, v any) (found bool, err error) {
	if err := checkName(name); err != nil {
		return false, err
	}
	rctx, cancel := c.request(ctx)
	defer cancel()
	resp, err := c.cli.Get(rctx, c.RecordKey(name))
	if err != nil {
		return false, c.fail(ctx, "read record "+name, c.timeout, err)
	}
	if len(resp.Kvs) == 0 {
		return false, nil
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, v); err != nil {
		return true, fmt.Errorf("record %s: %w", name, err)
	}
	return true, nil
}

var (
	// ErrNotHeld is returned by Lock.Create when the lock is no longer held.
	ErrNotHeld = errors.New("lock no longer held")
	// ErrExists is returned by Lock.Create when the record already exists.
	ErrExists = errors.New("record already exists")
)

// Create stores v as JSON in the named record in one etcd transaction that
// succeeds only while this lock is still held (its key is on this lock's
// lease) and the record does not exist yet. It returns an error wrapping
// ErrNotHeld or ErrExists when a condition fails: a holder that lost its
// lock can never write the record, and the record is written at most once.
func (l *Lock) Create(ctx context.Context, name string, v any) error {
	c := l.c
	data, err := recordValue(name, v)
	if err != nil {
		return err
	}
	rctx, cancel := c.request(ctx)
	defer cancel()
	rk := c.RecordKey(name)
	resp, err := c.cli.Txn(rctx).
		If(clientv3.Compare(clientv3.LeaseValue(l.path), "=", l.lease),
			clientv3.Compare(clientv3.CreateRevision(rk), "=", 0)).
		Then(clientv3.OpPut(rk, string(data))).
		Else(clientv3.OpGet(l.path), clientv3.OpGet(rk, clientv3.WithCountOnly())).
		Commit()
	if err != nil {
		return c.fail(ctx, "create record "+name, c.timeout, err)
	}
	if resp.Succeeded {
		return nil
	}
	if rr := resp.Responses[1].GetResponseRange(); rr != nil && rr.Count > 0 {
		return fmt.Errorf("record %s: %w", name, ErrExists)
	}
	return fmt.Errorf("record %s under lock %s: %w", name, l.key, ErrNotHeld)
}

// Entry is one record found by List.
type Entry struct {
	Name  string // relative to the records prefix, as given to Put
	Value json.RawMessage
}

// List returns the records whose names start with prefix (e.g. "runs/"),
// sorted by name.
func (c *Client) List(ctx context.Context, prefix string) ([]Entry, error) {
	rctx, cancel := c.request(ctx)
	defer cancel()
	base := c.RecordKey("")
	resp, err := c.cli.Get(rctx, base+prefix, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, c.fail(ctx, "list records "+prefix, c.timeout, err)
	}
	out := make([]Entry, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out = append(out, Entry{Name: strings.TrimPrefix(string(kv.Key), base), Value: json.RawMessage(kv.Value)})
	}
	return out, nil
}

// Delete removes the named record; a missing record is not an error.
func (c *Client) Delete(ctx context.Context, name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	rctx, cancel := c.request(ctx)
	defer cancel()
	if _, err := c.cli.Delete(rctx, c.RecordKey(name)); err != nil {
		return c.fail(ctx, "delete record "+name, c.timeout, err)
	}
	return nil
}

// Held reports whether the named lock exists (someone holds it).
func (c *Client) Held(ctx context.Context, name string) (bool, error) {
	if err := checkName(name); err != nil {
		return false, err
	}
	rctx, cancel := c.request(ctx)
	defer cancel()
	resp, err := c.cli.Get(rctx, c.LockKey(name), clientv3.WithCountOnly())
	if err != nil {
		return false, c.fail(ctx, "read lock "+name, c.timeout, err)
	}
	return resp.Count > 0, nil
}
