//go:build gendocs

// gen-docs writes the man pages and docs/cli.md from the command tree. It is
// built only with -tags gendocs (make man, make docs), so the binary users
// run does not carry the generator.
package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

func init() { extraCommands = append(extraCommands, newGenDocsCmd) }

func newGenDocsCmd(a *app) *cobra.Command {
	var man, md string
	cmd := &cobra.Command{
		Use:    "gen-docs",
		Short:  "Write man pages (--man DIR) and the CLI reference (--markdown FILE)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			root := cmd.Root()
			root.InitDefaultCompletionCmd()
			root.DisableAutoGenTag = true
			if man != "" {
				if err := os.MkdirAll(man, 0o755); err != nil {
					return fmt.Errorf("man pages: %w", err)
				}
				h := &doc.GenManHeader{Title: "PGKEEP", Section: "1", Source: "pgkeep " + version, Manual: "pgkeep manual"}
				if err := doc.GenManTree(root, h, man); err != nil {
					return fmt.Errorf("man pages: %w", err)
				}
			}
			if md != "" {
				if err := writeCLIMarkdown(root, md); err != nil {
					return fmt.Errorf("cli reference: %w", err)
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&man, "man", "", "directory for the man pages")
	cmd.Flags().StringVar(&md, "markdown", "", "file for the one-page CLI reference")
	return cmd
}

// writeCLIMarkdown writes every visible command into one page, in tree
// order, with links between the sections.
func writeCLIMarkdown(root *cobra.Command, path string) error {
	var buf bytes.Buffer
	buf.WriteString("# pgkeep command reference\n\n")
	buf.WriteString("Generated from the commands' own help by `make docs` (do not edit by hand);\n")
	buf.WriteString("the same text is in the man pages (`man pgkeep-backup`) and in `pgkeep help <command>`.\n")
	buf.WriteString("Exit codes are in [wal.md](wal.md#exit-codes); configuration keys in\n")
	buf.WriteString("[configs/pgkeep.yml](../configs/pgkeep.yml).\n\n")
	var cmds []*cobra.Command
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if !c.IsAvailableCommand() && c != root || c.IsAdditionalHelpTopicCommand() {
			return
		}
		cmds = append(cmds, c)
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(root)
	for _, c := range cmds {
		buf.WriteString("- [" + c.CommandPath() + "](#" + anchor(c) + ")\n")
	}
	buf.WriteString("\n")
	link := func(name string) string {
		base := strings.TrimSuffix(name, ".md")
		return "#" + strings.ReplaceAll(base, "_", "-")
	}
	for _, c := range cmds {
		var one bytes.Buffer
		if err := doc.GenMarkdownCustom(c, &one, link); err != nil {
			return err
		}
		// One level down: the page has one title.
		s := strings.ReplaceAll(one.String(), "\n## ", "\n### ")
		buf.WriteString(s)
		buf.WriteString("\n")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

func anchor(c *cobra.Command) string {
	return strings.ReplaceAll(c.CommandPath(), " ", "-")
}
