"""``python -m ibot.suite``: the suite runner's command line (see :mod:`ibot.suite.cli`)."""
import sys

from ibot.suite.cli import main

sys.exit(main())
