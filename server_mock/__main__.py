"""``python -m server_mock``: the ``clara-mock`` command line."""

import sys

from server_mock._cli import main

sys.exit(main())
