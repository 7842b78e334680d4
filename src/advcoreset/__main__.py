"""``python -m advcoreset ...`` and ``torchrun --nproc_per_node=N -m advcoreset train ...``: the CLI."""

import sys

from advcoreset.cli import main

if __name__ == "__main__":
    sys.exit(main())
