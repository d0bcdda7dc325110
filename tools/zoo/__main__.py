"""``python -m tools.zoo [--only NAME,...] [--fast] [--out docs/coverage]``: run the coverage zoo (run.py)."""

from tools.zoo.run import main

raise SystemExit(main())
