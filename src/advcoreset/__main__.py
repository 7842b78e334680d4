"""``python -m advcoreset ...`` and ``torchrun --nproc_per_node=N -m advcoreset train ...``: the CLI."""

import os
import sys

# ``python -m`` puts the working folder first on the import path: a stray torch.py or safetensors.py there
# would be imported in place of the installed package. The user's own --model module is still found
# (advcoreset.evaluation.outside searches the working folder last, for that module only).
sys.path[:] = [p for p in sys.path if p not in ("", os.getcwd())]

from advcoreset.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
