"""What a trainer run says, parsed: its progress (the tqdm bar on stderr, `kind: train` rows of metrics.jsonl), the
step it resumed from (stdout) and, when it fails, an error message from the tail of stderr. Pure text in, no I/O:
service.training's runner feeds it. Must not import torch, transformers or trainer.
"""

from __future__ import annotations

import codecs
import json
import re
import signal
from collections import deque
from dataclasses import dataclass

_TRAIN_BAR = re.compile(r"^train:.*?\|\s*(\d+)/(\d+) \[")  # the trainer's tqdm bar (desc="train")
_ANY_BAR = re.compile(r"\|\s*\d+/\d+ \[")  # any tqdm bar: progress, not an error line
_RESUMED = re.compile(r"^resumed from step-(\d+)")
_TRACEBACK = "Traceback (most recent call last):"


@dataclass(frozen=True)
class Progress:
    step: int
    total: int | None  # None until the trainer has planned its steps
    loss: float | None = None  # mean over the last logged window
    accuracy: float | None = None  # training pairwise accuracy over that window


class TrainerOutput:
    """What a trainer run says: progress, the resume point and an error message. Pure: fed text, no I/O.

    The planned step count appears only in the trainer's progress bar (stderr), so the runner keeps it on;
    loss and accuracy come from metrics.jsonl rows (every --log-every steps).
    """

    def __init__(self, tail_lines: int = 200) -> None:
        self.started = False  # "config:" printed: the version directory exists
        self.resumed_from_step: int | None = None
        self.step = 0
        self.total: int | None = None
        self.loss: float | None = None
        self.accuracy: float | None = None
        self._stderr: deque[str] = deque(maxlen=tail_lines)
        self._partial = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    @property
    def progress(self) -> Progress | None:
        if self.total is None and not self.step:
            return None  # nothing planned or logged yet
        return Progress(self.step, self.total, self.loss, self.accuracy)

    def stdout_line(self, line: str) -> None:
        if line.startswith("config: "):
            self.started = True
        elif match := _RESUMED.match(line):
            self.resumed_from_step = int(match.group(1))

    def stderr_bytes(self, data: bytes, final: bool = False) -> None:
        # tqdm redraws with "\r" and no newline, so segments end at either.
        segments = re.split(r"[\r\n]", self._partial + self._decoder.decode(data, final))
        self._partial = "" if final else segments.pop()
        for segment in segments:
            if not self._bar(segment) and segment.strip():
                self._stderr.append(segment.rstrip())
        if self._partial:
            self._bar(self._partial)

    def _bar(self, segment: str) -> bool:
        if match := _TRAIN_BAR.match(segment):
            self.step, self.total = max(self.step, int(match.group(1))), int(match.group(2))
        return bool(_ANY_BAR.search(segment))

    def metrics_text(self, text: str) -> None:
        """Complete lines of metrics.jsonl; only `kind: train` rows are progress."""
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # not ours to validate: progress is best effort
            if isinstance(row, dict) and row.get("kind") == "train":
                self.step = max(self.step, int(row.get("step", 0)))
                self.loss, self.accuracy = row.get("loss"), row.get("accuracy")

    def error_message(self, returncode: int, max_lines: int = 5) -> str:
        """The last lines of stderr; of a Python traceback only the exception, never the frames."""
        lines = list(self._stderr)
        starts = [i for i, line in enumerate(lines) if line.startswith(_TRACEBACK)]
        if starts:
            lines = lines[starts[-1] + 1 :]
        lines = [line for line in lines if not line[:1].isspace()]  # frames, source lines, carets
        if lines:
            return "\n".join(lines[-max_lines:])[-2000:]
        if returncode < 0:
            return f"trainer killed by {signal.Signals(-returncode).name}"
        return f"trainer exited with code {returncode}"
