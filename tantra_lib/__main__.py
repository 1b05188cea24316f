"""`python -m tantra_lib ...` is the `tantra` command."""

import sys

from .cli import main

sys.exit(main())
