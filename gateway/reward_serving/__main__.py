"""`python -m gateway.reward_serving`: the same as `rewardgate-rm`."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
