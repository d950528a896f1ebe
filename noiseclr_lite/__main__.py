"""``python -m noiseclr_lite`` runs the command line (see ``noiseclr_lite.cli``)."""

import sys

from .cli import main

sys.exit(main())
