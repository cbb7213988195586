//go:build !amd64

package walmap

func recordCRC(rec []byte) uint32 { return recordCRCGo(rec) }
