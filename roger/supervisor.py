"""``python -m roger.supervisor``: run a node's root supervisor (same as ``roger run``)."""

import sys

from roger.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
