package s3_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/internal/s3test"
	"github.com/pgkeep/pgkeep/storage"
	"github.com/pgkeep/pgkeep/storage/s3"
)

// BenchmarkPutPacks uploads two 64 MiB objects at once, as a backup's two
// pack writers do, and reports throughput and the peak Go heap (what the
// part buffers and the SDK cost in memory).
func BenchmarkPutPacks(b *testing.B) {
	srv := s3test.Start(b)
	bucket := "bench-mem"
	srv.CreateBucket(b, bucket)
	be := srv.Backend(b, bucket, "", s3.Options{Concurrency: 2})
	data := make([]byte, 64<<20)
	rand.Read(data)
	var peak atomic.Uint64
	stop := make(chan struct{})
	go func() {
		var ms runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
		}
	}()
	runtime.GC()
	b.SetBytes(2 * int64(len(data)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var wg sync.WaitGroup
		for p := 0; p < 2; p++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := be.Put(context.Background(), fmt.Sprintf("pack-%d-%d", i, p), bytes.NewReader(data), storage.PutOptions{}); err != nil {
					b.Error(err)
				}
			}()
		}
		wg.Wait()
	}
	b.StopTimer()
	close(stop)
	b.ReportMetric(float64(peak.Load()-uint64(len(data)))/(1<<20), "peak-heap-MiB")
}
