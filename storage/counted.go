package storage

import (
	"context"
	"errors"
	"io"
)

// Op is a kind of storage request, as an object store bills them: a
// GetRange is a get; a List is one call here, which S3 answers in pages
// of up to 1,000 names.
type Op string

const (
	OpGet    Op = "get"
	OpPut    Op = "put"
	OpList   Op = "list"
	OpDelete Op = "delete"
	OpStat   Op = "stat"
)

// Ops lists every Op.
var Ops = []Op{OpGet, OpPut, OpList, OpDelete, OpStat}

// Counted wraps b so that every request is reported to count once it
// has ended, with failed true only for a failure of the store: an object
// that is not there, a create-if-absent that found one, a cancelled
// request and an error of a List callback's own are not failures. The
// daemon's storage request metrics count through it.
func Counted(b Backend, count func(op Op, failed bool)) Backend {
	return &counted{Backend: b, count: count}
}

type counted struct {
	Backend
	count func(Op, bool)
}

func (c *counted) done(op Op, err error) {
	c.count(op, err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrExists) && !errors.Is(err, context.Canceled))
}

func (c *counted) Put(ctx context.Context, name string, r io.Reader, opts PutOptions) error {
	err := c.Backend.Put(ctx, name, r, opts)
	c.done(OpPut, err)
	return err
}

func (c *counted) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	rc, err := c.Backend.Get(ctx, name)
	c.done(OpGet, err)
	return rc, err
}

func (c *counted) GetRange(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	rc, err := c.Backend.GetRange(ctx, name, offset, length)
	c.done(OpGet, err)
	return rc, err
}

func (c *counted) Stat(ctx context.Context, name string) (ObjectInfo, error) {
	oi, err := c.Backend.Stat(ctx, name)
	c.done(OpStat, err)
	return oi, err
}

func (c *counted) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	var fnErr error
	err := c.Backend.List(ctx, prefix, func(o ObjectInfo) error {
		if e := fn(o); e != nil {
			fnErr = e
			return e
		}
		return nil
	})
	if fnErr != nil && errors.Is(err, fnErr) {
		c.done(OpList, nil)
	} else {
		c.done(OpList, err)
	}
	return err
}

func (c *counted) Delete(ctx context.Context, name string) error {
	err := c.Backend.Delete(ctx, name)
	c.done(OpDelete, err)
	return err
}

func (c *counted) ProbeConditionalPut(ctx context.Context) error { return probe(ctx, c.Backend) }
