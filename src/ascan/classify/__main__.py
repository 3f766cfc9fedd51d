"""``python -m ascan.classify``: what torchrun launches (``torchrun --nproc_per_node 2 -m ascan.classify``)."""

import sys

from ascan.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
