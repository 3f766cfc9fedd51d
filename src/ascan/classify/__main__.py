"""``python -m ascan.classify [VERB] ...``: ``ascan classify VERB ...``, the verb ``train`` when none is given (what
``torchrun --nproc_per_node 2 -m ascan.classify ...`` runs)."""

import sys

from ascan.cli import TASKS, main

if __name__ == "__main__":
    argv = sys.argv[1:]
    verb = [] if argv and argv[0] in TASKS["classify"].verbs else ["train"]
    sys.exit(main(["classify", *verb, *argv]))
