"""Rated responses (scalar rewards) made from the bundled preference sample, for the README's "ratings" example
and the tests: each pair's two answers become two rated rows (the pair's prompt, so the same TRAIN/TEST side).

    python scripts/make_rated_data.py --out ratings.jsonl                 # thumbs: chosen 1, rejected 0
    python scripts/make_rated_data.py --out stars.jsonl --labels stars    # 1..5 stars: chosen 4-5, rejected 1-2

Stars are fixed by a hash of the answer, so the file is the same on every run. Stdlib only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1] / "trainer" / "samples" / "support_pairs.jsonl"


def _stars(text: str, low: int) -> int:
    return low + int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:2], 16) % 2


def rated_rows(sample: Path = SAMPLE, labels: str = "thumbs", limit: int = 0) -> Iterator[dict[str, object]]:
    """Two rated rows per pair of `sample` (the first `limit` pairs; 0 = all)."""
    with sample.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh):
            if limit and number >= limit:
                return
            pair = json.loads(line)
            prompt, chosen, rejected = pair["messages"][:-1], pair["messages"][-1], pair["rejected_message"]
            for answer, good in ((chosen, True), (rejected, False)):
                if labels == "stars":
                    reward: float = _stars(answer["content"], 4 if good else 1)
                else:
                    reward = 1.0 if good else 0.0
                out = {"messages": [*prompt, answer], "reward": reward}
                yield out | ({"split": pair["split"]} if "split" in pair else {})  # else the same prompt-hash split


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the JSONL file to write")
    parser.add_argument("--labels", choices=("thumbs", "stars"), default="thumbs")
    parser.add_argument("--limit", type=int, default=0, help="use the first N pairs (0 = all)")
    args = parser.parse_args(argv)
    rows = list(rated_rows(SAMPLE, args.labels, args.limit))
    with open(args.out, "w", encoding="utf-8") as out:
        out.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    print(f"{args.out}: {len(rows)} rated responses ({args.labels})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
