package repo

import "github.com/pgkeep/pgkeep/storage"

// Errors of the store under the repository, as repo's callers see them.
// They are storage's own values, so errors.Is matches either name
// whichever layer wrapped the error: callers above repo test these and
// never import storage.
var (
	// ErrNotFound: the repository answered that the object is not there.
	ErrNotFound = storage.ErrNotFound
	// ErrExists: a create-if-absent found the name taken; nothing changed.
	ErrExists = storage.ErrExists
	// ErrUnavailable: the store could not answer (unreachable, timed out,
	// cut off), on a repository opened over storage.TagUnavailable.
	ErrUnavailable = storage.ErrUnavailable
)
