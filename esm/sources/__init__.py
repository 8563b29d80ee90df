"""Source families, one package each (`sqs`, `streams`), named in `registry` with what they
share in `base`. See README, "Adding a source"."""
