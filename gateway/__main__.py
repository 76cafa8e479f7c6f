"""`python -m gateway serve ...`: the same as the `rewardgate` console script."""

from __future__ import annotations

from gateway.cli import main

raise SystemExit(main())
