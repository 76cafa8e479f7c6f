"""scripts/make_rated_data.py: the README's rated-responses example data, made from the bundled sample."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from gateway.formats import load_rated

ROOT = Path(__file__).resolve().parents[2]


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_rated_data", ROOT / "scripts" / "make_rated_data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_script_writes_thumbs_and_stars(tmp_path: Path) -> None:
    for labels, binary in (("thumbs", True), ("stars", False)):
        out = tmp_path / f"{labels}.jsonl"
        done = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "make_rated_data.py"), "--out", str(out), "--labels", labels],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "800 rated responses" in done.stderr
        assert load_rated(out).binary is binary
