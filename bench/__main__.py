"""``python -m bench [options]`` runs the bench; ``python -m bench worker|raw-worker`` is one of
the worker processes it starts."""

import sys

from bench.cli import main

sys.exit(main())
