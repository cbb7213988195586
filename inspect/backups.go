package inspect

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pgkeep/pgkeep/internal/human"
	"github.com/pgkeep/pgkeep/repo"
)

// ListBackups prints the repository's backups, complete and incomplete,
// with their keep marks, as JSON or a table.
func ListBackups(ctx context.Context, r *repo.Repository, asJSON bool, out io.Writer) error {
	backups, debris, err := r.ListBackups(ctx)
	if err != nil {
		return err
	}
	keeps, err := r.KeptBackups(ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	kept := func(id string) (bool, *time.Time) {
		k, ok := keeps[id]
		if !ok || !k.Active(now) {
			return false, nil
		}
		return true, k.Until
	}
	if asJSON {
		type row struct {
			repo.Summary
			Status    string     `json:"status"`
			Kept      bool       `json:"kept"`
			KeepUntil *time.Time `json:"keep_until,omitempty"`
		}
		rows := []row{}
		for _, b := range backups {
			k, until := kept(b.ID)
			rows = append(rows, row{b, "complete", k, until})
		}
		for _, id := range debris {
			rows = append(rows, row{Summary: repo.Summary{ID: id}, Status: "incomplete"})
		}
		return human.JSON(out, rows)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTART\tSTOP\tSTART LSN\tSTOP LSN\tTL\tDB SIZE\tSTORED\tSOURCE\tSTATUS\tANNOTATIONS\tTYPE")
	for _, b := range backups {
		status := "complete"
		if k, _ := kept(b.ID); k {
			status = "complete, kept"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s (%s)\t%s\t%s\t%s\n", b.ID,
			b.StartTime.Format(time.RFC3339), b.StopTime.Format(time.RFC3339), b.StartLSN, b.StopLSN,
			b.Timeline, human.Bytes(b.DataSize), human.Bytes(b.StoredSize), b.Host, b.Role, status, human.Annotations(b.Annotations), backupType(b))
	}
	for _, id := range debris {
		fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t-\t-\t-\tincomplete (running or failed)\n", id)
	}
	return tw.Flush()
}

// ShowBackup prints backup id, as JSON or text.
func ShowBackup(ctx context.Context, r *repo.Repository, id string, asJSON bool, out io.Writer) error {
	s, err := r.ReadSummary(ctx, id)
	if err != nil {
		return err
	}
	keeps, err := r.KeptBackups(ctx)
	if err != nil {
		return err
	}
	k, isKept := keeps[s.ID]
	isKept = isKept && k.Active(time.Now())
	if asJSON {
		v := struct {
			repo.Summary
			Status    string     `json:"status"`
			Kept      bool       `json:"kept"`
			KeepUntil *time.Time `json:"keep_until,omitempty"`
		}{Summary: s, Status: "complete", Kept: isKept}
		if isKept {
			v.KeepUntil = k.Until
		}
		return human.JSON(out, v)
	}
	defer func() {
		if isKept {
			until := "until unkept"
			if k.Until != nil {
				until = "until " + k.Until.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(out, "kept:              %s\n", until)
		}
		if len(s.Annotations) > 0 {
			fmt.Fprintf(out, "annotations:       %s\n", human.Annotations(s.Annotations))
		}
	}()
	fmt.Fprintf(out, "id:                %s\nstatus:            complete\nstart:             %s  LSN %s  (WAL %s)\nstop:              %s  LSN %s  (WAL %s)\ntimeline:          %d\nsource:            %s (%s)\npostgresql:        %d\nsystem identifier: %s\ndata checksums:    %v\nsize in database:  %s (%d files)\nsize in repository: %s\n",
		s.ID, s.StartTime.Format(time.RFC3339), s.StartLSN, s.StartWAL, s.StopTime.Format(time.RFC3339), s.StopLSN, s.StopWAL,
		s.Timeline, s.Host, s.Role, s.PGVersion, s.SystemIdentifier, s.DataChecksums, human.Bytes(s.DataSize), s.Files, human.Bytes(s.StoredSize))
	fmt.Fprintf(out, "type:              %s\n", backupType(s))
	if s.BytesRead > 0 || s.Reference != "" {
		fmt.Fprintf(out, "bytes read:        %s\n", human.Bytes(s.BytesRead))
	}
	if c := s.Capture; c != nil {
		fmt.Fprintf(out, "change capture:    %s\n", captureLine(c))
	}
	return nil
}

// captureLine says how an incremental found what changed: "map (WAL
// from..to)", "hash (map mode not used: why)", and a checksum backup's
// audit of the block maps.
func captureLine(c *repo.ChangeCapture) string {
	line := c.Mode
	switch {
	case c.Mode == "map":
		line += fmt.Sprintf(" (WAL block maps %s..%s; %d mapped pages, %d sampled unread pages checked)", c.MapFrom, c.MapTo, c.MappedPages, c.SampledPages)
	case c.Fallback != "":
		line += " (map mode not used: " + c.Fallback + ")"
	}
	switch c.Audit {
	case "":
	case "misses":
		line += fmt.Sprintf("; block map audit: %d changed pages the maps missed, e.g. %s", c.AuditMisses, strings.Join(c.AuditExamples, "; "))
	default:
		line += "; block map audit: " + c.Audit
	}
	return line
}

// backupType is "full", or "incr of <reference>" (also for checksum).
func backupType(s repo.Summary) string {
	t := s.Type
	if t == "" {
		t = "full"
	}
	if s.Reference != "" {
		t += " of " + s.Reference
	}
	return t
}
