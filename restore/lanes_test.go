package restore

import (
	"fmt"
	"testing"
)

// Two workers restoring two files each keep to their own file (no two
// writers on one inode) until a file runs out; then they share the other.
func TestLanesKeepWorkersOnDifferentFiles(t *testing.T) {
	files := []string{"a", "a", "a", "b", "b", "c"}
	l := newLanes(len(files), func(i int) string { return files[i] })
	var w1, w2 string
	i1, _ := l.next(&w1)
	i2, _ := l.next(&w2)
	if w1 != "a" || w2 != "b" || i1 != 0 || i2 != 3 {
		t.Fatalf("first picks: %s/%d %s/%d, want a/0 b/3 (the first file nobody writes)", w1, i1, w2, i2)
	}
	// w1 finishes and goes on with its file, in job order.
	l.done(w1)
	if i, _ := l.next(&w1); w1 != "a" || i != 1 {
		t.Fatalf("w1 moved to %s/%d, want a/1", w1, i)
	}
	// w2 finishes its file's jobs, then takes c, which nobody writes,
	// rather than joining w1 on a, which comes first.
	l.done(w2)
	if i, _ := l.next(&w2); w2 != "b" || i != 4 {
		t.Fatalf("w2: %s/%d, want b/4", w2, i)
	}
	l.done(w2)
	if i, _ := l.next(&w2); w2 != "c" || i != 5 {
		t.Fatalf("w2: %s/%d, want c/5", w2, i)
	}
	l.done(w2)
	// Only a is left and w1 writes it: w2 shares it rather than idling.
	if i, ok := l.next(&w2); !ok || w2 != "a" || i != 2 {
		t.Fatalf("w2: %s/%d %v, want a/2", w2, i, ok)
	}
	l.done(w2)
	l.done(w1)
	if _, ok := l.next(&w1); ok {
		t.Fatal("a job handed out twice")
	}
}

// Many files with one job each: every job is handed out exactly once, and
// in order when one worker asks.
func TestLanesManyFiles(t *testing.T) {
	const n = 100000
	l := newLanes(n, func(i int) string { return fmt.Sprint(i) })
	var w string
	for want := 0; want < n; want++ {
		i, ok := l.next(&w)
		if !ok || i != want {
			t.Fatalf("job %d: got %d %v", want, i, ok)
		}
		l.done(w)
	}
	if _, ok := l.next(&w); ok {
		t.Fatal("a job handed out twice")
	}
}
