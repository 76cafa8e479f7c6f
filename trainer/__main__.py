"""`python -m trainer` = `rewardgate-train`."""

from trainer.cli import main

raise SystemExit(main())
