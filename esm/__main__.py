"""`python -m esm` is the same as the `esm` console script."""

from esm.cli import main

raise SystemExit(main())
