import sys

from cowork.cli import main

sys.exit(main())
