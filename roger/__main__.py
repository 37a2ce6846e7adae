import sys

from roger.cli import main

sys.exit(main())
