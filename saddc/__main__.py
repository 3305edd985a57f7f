"""``python -m saddc`` is the ``saddc`` command."""

from saddc.cli import main

raise SystemExit(main())
