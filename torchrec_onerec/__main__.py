"""``python -m torchrec_onerec ...`` is the ``onerec`` command (also what ``torchrun -m`` launches)."""

import sys

from torchrec_onerec.cli import main

if __name__ == "__main__":
    sys.exit(main())
