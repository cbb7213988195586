package mem

import (
	"testing"

	"github.com/pgkeep/pgkeep/storage"
	"github.com/pgkeep/pgkeep/storage/storagetest"
)

func TestConformance(t *testing.T) {
	storagetest.Run(t, 4<<20, func(t *testing.T) storage.Backend { return New() })
}
