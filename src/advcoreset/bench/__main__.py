"""``python -m advcoreset.bench SPEC``: the same as ``advcoreset bench SPEC``."""

import sys

from advcoreset.bench import main

sys.exit(main())
