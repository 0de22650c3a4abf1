"""`python -m tdxattest <verb>`."""

import sys

from tdxattest.cli import main

sys.exit(main())
