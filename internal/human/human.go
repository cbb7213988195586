// Package human formats values for the tables and lines pgkeep prints:
// sizes in binary units, "-" for nothing, annotations as k="v" words.
package human

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
)

// Bytes is n in B, KiB, MiB, ... with one decimal.
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// Dash is s, or "-" for an empty table cell.
func Dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Annotations is a backup's annotations as k="v" words, sorted.
func Annotations(a map[string]string) string {
	var parts []string
	for k, v := range a {
		parts = append(parts, k+"="+strconv.Quote(v))
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

// OneLine is err's message with its whitespace (newlines included)
// collapsed, for a table cell or a one-line report.
func OneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

// JSON writes v indented, as every --json output is.
func JSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
