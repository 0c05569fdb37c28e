"""`python -m aaclip …` and `torchrun --nproc_per_node N -m aaclip train|test …`."""

import sys

from aaclip.cli import main

if __name__ == "__main__":
    sys.exit(main())
