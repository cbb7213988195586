package pg

import (
	"bufio"
	"fmt"
	"strconv"
	"strings"
)

// TimelineSwitch is one line of a timeline history file: timeline Parent
// ended at Switch, where its child began.
type TimelineSwitch struct {
	Parent uint32
	Switch LSN
}

// ParseHistory parses a NNNNNNNN.history file's content.
func ParseHistory(data []byte) ([]TimelineSwitch, error) {
	var out []TimelineSwitch
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 2 {
			return nil, fmt.Errorf("history line %d: %q", n, line)
		}
		tli, err := strconv.ParseUint(fields[0], 10, 32)
		if err != nil {
			return nil, fmt.Errorf("history line %d: bad timeline %q", n, fields[0])
		}
		lsn, err := ParseLSN(fields[1])
		if err != nil {
			return nil, fmt.Errorf("history line %d: %w", n, err)
		}
		out = append(out, TimelineSwitch{Parent: uint32(tli), Switch: lsn})
	}
	return out, sc.Err()
}

// TimelineForSegment returns the timeline recovery reads segment segno from
// when following timeline target with the given history: the newest
// timeline on the path that had begun by the segment's start. PostgreSQL
// reads the segment holding a switch point from the child's file.
func TimelineForSegment(target uint32, history []TimelineSwitch, segno uint64, segmentSize int64) uint32 {
	// Walk from the oldest ancestor: timeline history[i].Parent ran until
	// history[i].Switch; the next one (or target) took over from there.
	tli := target
	for i := len(history) - 1; i >= 0; i-- {
		switchSeg := uint64(history[i].Switch) / uint64(segmentSize)
		if segno < switchSeg {
			tli = history[i].Parent
		} else {
			break
		}
	}
	return tli
}
