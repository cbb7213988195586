package pg

import (
	"testing"
	"time"
)

func TestArchiverStatusState(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	t1 := t0.Add(time.Minute)
	for _, tc := range []struct {
		name             string
		archived, failed *time.Time
		want             bool
	}{
		{"never archived, never failed", nil, nil, false},
		{"archived, never failed", &t0, nil, false},
		{"failed, never archived", nil, &t0, true},
		{"failed after the last success", &t0, &t1, true},
		{"succeeded after the last failure", &t1, &t0, false},
	} {
		s := ArchiverStatus{LastArchivedTime: tc.archived, LastFailedTime: tc.failed, LastFailedWAL: "000000010000000000000003", FailedCount: 2}
		st := s.State()
		if st.Failing != tc.want {
			t.Errorf("%s: failing %v, want %v", tc.name, st.Failing, tc.want)
		}
		if st.FailedWAL != s.LastFailedWAL || st.FailedRuns != 2 || (tc.failed != nil && !st.FailedAt.Equal(*tc.failed)) {
			t.Errorf("%s: %+v", tc.name, st)
		}
	}
}
