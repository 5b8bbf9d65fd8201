"""``python -m promptgate`` runs the CLI."""

import sys

from promptgate.cli import main

sys.exit(main())
