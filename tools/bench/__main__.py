"""``python -m tools.bench``: see `tools.bench.run`."""

from tools.bench.run import main

raise SystemExit(main())
