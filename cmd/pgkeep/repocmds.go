package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
)

func newRepoCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "repo",
		Short:   "Create and inspect the repository",
		Example: "  pgkeep repo init --pgdata /var/lib/postgresql/15/main\n  pgkeep repo show",
	}
	cmd.AddCommand(newRepoInitCmd(a), newRepoShowCmd(a))
	return cmd
}

func newRepoInitCmd(a *app) *cobra.Command {
	var pgdata string
	cmd := withConfig(&cobra.Command{
		Use:   "init",
		Short: "Create the repository's config object (refuses to re-initialize)",
		Long: `repo init writes the repository's config object: format version, compression,
encryption mode and, when the data directory is readable, the PostgreSQL system
identifier, so no other cluster can archive into the repository by mistake.
Encryption follows pgkeep.yml: encryption.recipients (age public keys) or
encryption.passphrase_file.`,
		Example: `  pgkeep repo init
  PGKEEP_REPOSITORY=s3://backups/prod pgkeep repo init --pgdata /var/lib/postgresql/15/main`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			keys, err := loadKeys(a.cfg)
			if err != nil {
				return err
			}
			if pgdata != "" && !filepath.IsAbs(pgdata) {
				return &configError{fmt.Sprintf("--pgdata %q must be an absolute path", pgdata)}
			}
			dir := pgdata
			if dir == "" {
				dir = a.cfg.PGData
			}
			var sysid uint64
			if dir != "" {
				sysid, err = pg.SystemIdentifier(dir)
				if err != nil && pgdata != "" {
					return fmt.Errorf("repo init: %w", err)
				}
			}
			b, err := openBackend(ctx, a.cfg, true)
			if err != nil {
				return fmt.Errorf("repo init: %w", err)
			}
			cfg, err := repo.Init(ctx, b, repo.InitOptions{
				CompressionLevel: a.cfg.Compression.Level,
				Keys:             keys,
				SystemIdentifier: sysid,
				Now:              time.Now(),
			})
			if err != nil {
				return fmt.Errorf("repo init: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "initialized %s (format %d, compression %s, encryption %s)\n",
				b, cfg.Format, cfg.Compression, cfg.Encryption)
			return nil
		},
	})
	cmd.Flags().StringVar(&pgdata, "pgdata", "", "data directory whose system identifier the repository is bound to (default: config pgdata)")
	return cmd
}

func newRepoShowCmd(a *app) *cobra.Command {
	return withConfig(&cobra.Command{
		Use:     "show",
		Short:   "Print the repository's config object",
		Example: "  pgkeep repo show",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			b, err := openBackend(ctx, a.cfg, false)
			if err != nil {
				return err
			}
			cfg, err := repo.ReadConfig(ctx, b)
			if err != nil {
				return err
			}
			cfg.WrappedIdentity = "" // encrypted, but of no use on a screen
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			return enc.Encode(struct {
				Location string `json:"location"`
				repo.Config
			}{b.String(), cfg})
		},
	})
}
