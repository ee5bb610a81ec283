"""``python -m clinical_r1 <stage> ...``: the command line of :mod:`clinical_r1.cli`."""

import sys

from clinical_r1.cli import main

if __name__ == "__main__":
    sys.exit(main())
