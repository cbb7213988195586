package walmap

import "testing"

func checkRealMaps(t *testing.T, segs []*walkedSeg, maps []*Map) {}

func checkCut(t *testing.T, segs []*walkedSeg) {}
