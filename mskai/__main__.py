import sys

from mskai.cli import main

sys.exit(main())
