"""``python -m fastrm_core ...`` = the ``fastrm`` command."""

from fastrm_core.cli import main

raise SystemExit(main())
