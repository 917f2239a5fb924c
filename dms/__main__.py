import sys

from dms.cli import main

sys.exit(main())
