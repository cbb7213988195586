package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/pgkeep/pgkeep/keyfile"
)

func newKeygenCmd(a *app) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "keygen",
		Short: "Write a new age identity (0600) and print its public key",
		Long: `keygen writes a new age X25519 identity to --output (mode 0600, never over an
existing file) and prints the matching recipient. Put the recipient in
encryption.recipients on hosts that push, and the identity file in
encryption.identity_file on hosts that restore.`,
		Example: "  pgkeep keygen --output /etc/pgkeep/identity.txt",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			recipient, err := keyfile.Generate(out)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), recipient)
			return nil
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "identity file to create")
	cmd.MarkFlagRequired("output")
	return cmd
}
