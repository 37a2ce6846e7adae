import sys

from benchmarks.chaos.runner import main

sys.exit(main())
