import sys

from roger.cli.main import main

sys.exit(main())
