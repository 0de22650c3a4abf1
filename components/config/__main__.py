"""`python -m components.config stacks/Pulumi.<stack>.yaml`: check a stack file offline."""

import sys

from components.config.stack import main

sys.exit(main())
