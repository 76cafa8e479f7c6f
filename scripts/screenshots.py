"""Refresh the console's screenshots in docs/screenshots/: runs the browser tests of tests/ui/test_console.py with
REWARDGATE_SCREENSHOTS set, so each main page is captured at the step of the test that shows it, with real data
from a real gateway (fake upstream, tiny reward model; the reward-model pages need the training-jobs API).

    python scripts/screenshots.py [--out docs/screenshots] [pytest args...]

Needs chromium, chromedriver and selenium (apt-get install chromium chromium-driver; pip install selenium);
without them the tests skip and nothing is written.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshots"), help="folder for the PNGs")
    args, pytest_args = parser.parse_known_args(argv)
    env = {**os.environ, "REWARDGATE_SCREENSHOTS": str(Path(args.out).resolve())}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/ui/test_console.py", *pytest_args]
    return subprocess.call(command, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
