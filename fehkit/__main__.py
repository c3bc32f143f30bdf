"""``python -m fehkit`` runs the ``fehkit`` command."""

import sys

from fehkit.cli import main

sys.exit(main())
