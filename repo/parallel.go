package repo

import "sync"

// forEachIndex calls fn(i) for every i in [0, n), at most workers at a
// time, and returns when all have returned. fn records its own results
// and errors by index.
func forEachIndex(n, workers int, fn func(i int)) {
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				fn(i)
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}
