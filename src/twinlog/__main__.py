"""``python -m twinlog``: the same as the ``twinlog`` command."""

from twinlog.cli import main

raise SystemExit(main())
