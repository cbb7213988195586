// Package storage defines the one small interface pgkeep keeps its
// repository behind, so the rest of the program never knows whether objects
// live on a local disk or in an S3 bucket.
//
// Object names are slash-separated relative paths ("wal/0000000100000000/…").
// Every Put is atomic: a reader sees either the whole object or none of it,
// even if the writer is killed mid-upload.
package storage

import (
	"context"
	"errors"
	"io"
	"time"
)

// ErrNotFound is returned (wrapped) when an object does not exist.
var ErrNotFound = errors.New("object not found")

// ErrExists is returned (wrapped) by Put with IfAbsent when the name is taken.
var ErrExists = errors.New("object already exists")

// ObjectInfo describes a stored object.
type ObjectInfo struct {
	Name    string // full object name, relative to the backend's root
	Size    int64
	ModTime time.Time
	// ETag is the store's version tag of the content, when it has one (S3);
	// it changes whenever the object is replaced.
	ETag string
}

// PutOptions changes how Put treats an existing object.
type PutOptions struct {
	// IfAbsent makes Put an atomic create: if an object with the name exists
	// (or is created concurrently) Put fails with ErrExists and the stored
	// object is left untouched.
	IfAbsent bool
}

// Backend is a flat object store.
type Backend interface {
	// Put stores everything read from r under name, durably, before it
	// returns nil.
	Put(ctx context.Context, name string, r io.Reader, opts PutOptions) error
	// Get opens the object for reading. Missing objects give ErrNotFound.
	Get(ctx context.Context, name string) (io.ReadCloser, error)
	// GetRange opens length bytes of the object starting at offset;
	// length < 0 means to the end.
	GetRange(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error)
	// Stat returns the object's size. Missing objects give ErrNotFound.
	Stat(ctx context.Context, name string) (ObjectInfo, error)
	// List calls fn for every object whose name starts with prefix, in
	// lexical order. An error from fn stops the listing and is returned.
	List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error
	// Delete removes the object. Deleting a missing object is not an error.
	Delete(ctx context.Context, name string) error
	// String names the backend for messages (never with credentials).
	String() string
}

// ConditionalPutProber is implemented by backends whose create-if-absent
// (PutOptions.IfAbsent) depends on the server honouring it, so it can be
// checked once, when a repository is created, instead of being trusted.
// The local filesystem needs no probe.
type ConditionalPutProber interface {
	// ProbeConditionalPut writes a probe object with IfAbsent, writes it
	// again the same way and requires that to be refused, then deletes it.
	// It returns an error naming the store's behaviour if the store
	// accepted the second write, or if the probe could not be done.
	ProbeConditionalPut(ctx context.Context) error
}
