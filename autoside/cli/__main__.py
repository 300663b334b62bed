"""``python -m autoside.cli``: the same as the ``autoside`` command."""

import sys

from autoside.cli.main import main

sys.exit(main())
