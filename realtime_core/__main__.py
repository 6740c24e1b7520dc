"""`python -m realtime_core` is the `realtime-core` command."""

import sys

from .cli import main

sys.exit(main())
