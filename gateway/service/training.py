"""Training jobs: runs `python -m trainer train` as a subprocess per job and reports what it does; import jobs
(`kind="import"`) run `python -m gateway.reward_serving import` the same way (same queue, output protocol, card).

Owns the job queue (FIFO, `concurrency` at a time, one job per slug at a time), the trainer's command line,
process-group termination, and reading the trainer's output (stdout, stderr, the growing metrics.jsonl,
rewardgate.json) into `JobUpdate`s (the parsing itself: service.trainer_output). Persistence and HTTP are the
caller's: every update goes to the injected `on_update`. Must not import torch, transformers or trainer.

Gateway restart: `aclose()` stops running trainers without reporting them, so the store still says
TRAINING; at start-up the caller re-submits those jobs with `resume=True` (the trainer continues the
slug's newest unfinished version directory from its newest checkpoint) and QUEUED ones as new.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from .trainer_output import Progress, TrainerOutput

logger = logging.getLogger(__name__)

CARD_FILE = "rewardgate.json"  # the trainer writes it last: its presence marks a finished model
_SLUG = re.compile(r"[a-z0-9][a-z0-9._-]*")  # the trainer's rule for --slug
_VERSION_DIR = re.compile(r"v(\d+)")


class JobState(StrEnum):
    QUEUED = "QUEUED"
    TRAINING = "TRAINING"
    DEPLOYED = "DEPLOYED"
    ERROR = "ERROR"


@dataclass(frozen=True)
class BaseModel:
    id: str
    description: str
    default: bool = False
    aliases: tuple[str, ...] = ()


# trainer.bases.ALIASES / DEFAULT_BASE, copied (the gateway may not import trainer); a test keeps them equal.
BASE_MODELS = (
    BaseModel("minilm", "all-MiniLM-L6-v2: BERT encoder, 22.7M parameters, fast on CPU", True, ("all-minilm-l6-v2",)),
    BaseModel("mpnet", "all-mpnet-base-v2: MPNet encoder, 110M parameters", False, ("all-mpnet-base-v2",)),
    BaseModel("smollm2", "SmolLM2-135M-Instruct: Llama decoder, better on a GPU", False, ("smollm2-135m-instruct",)),
)


# the learning rate of trainer.config.PRESETS["default"], copied (the gateway may not import trainer); a test keeps them
# equal. OpenPipe's learning_rate_multiplier scales it.
DEFAULT_LEARNING_RATE = 2e-4


def base_models() -> tuple[BaseModel, ...]:
    """The trainer's offline aliases; `base_model` also takes a local directory or a hub id."""
    return BASE_MODELS


@dataclass(frozen=True)
class Hyperparameters:
    """None = the trainer's default (see trainer/config.py)."""

    batch_size: int | Literal["auto"] = "auto"
    learning_rate: float | None = None
    epochs: int | None = None
    max_length: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size != "auto" and (isinstance(self.batch_size, bool) or self.batch_size < 1):
            raise ValueError(f"batch_size: expected a positive integer or 'auto', got {self.batch_size!r}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError("learning_rate: must be positive")
        for name in ("epochs", "max_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}: must be at least 1")


@dataclass(frozen=True)
class JobSpec:
    job_id: str
    slug: str
    data_path: str  # an exported preference JSONL (or rated responses); for an import, its calibration file or ""
    base_model: str = ""  # an alias from base_models(), a local directory or a hub id; "" = the default
    hyperparameters: Hyperparameters = field(default_factory=Hyperparameters)
    kind: Literal["train", "import"] = "train"  # import: base_model is the published reward model to import

    def __post_init__(self) -> None:
        if not self.job_id or not (self.data_path or self.kind == "import"):
            raise ValueError("job_id and data_path must not be empty")
        if self.kind == "import" and not self.base_model:
            raise ValueError("an import needs its source in base_model")
        if not _SLUG.fullmatch(self.slug):
            raise ValueError(f"slug: lowercase letters, digits, '.', '_' or '-', got {self.slug!r}")


@dataclass(frozen=True)
class JobUpdate:
    """A snapshot of one job as the runner knows it; every report carries all of it."""

    state: JobState
    progress: Progress | None = None
    error: str | None = None
    version: str | None = None  # "vN", set when DEPLOYED
    directory: Path | None = None  # <models_dir>/<slug>/vN, once the trainer has created it
    metrics: Mapping[str, Any] | None = None  # rewardgate.json's TEST metrics
    reward_stats: Mapping[str, Any] | None = None
    resumed_from_step: int | None = None  # the checkpoint's step, when the trainer resumed from one
    pid: int | None = None  # the trainer's process (and process-group) id


OnUpdate = Callable[[str, JobUpdate], Awaitable[None]]


def trainer_argv(
    spec: JobSpec, models_dir: Path, *, resume: bool = False, trainer_args: Sequence[str] = ()
) -> list[str]:
    """The arguments after `python -m trainer`. `trainer_args` are the operator's defaults (--threads,
    --precision, --save-steps...): they come first, so a job's own flags override them."""
    hp = spec.hyperparameters
    options = {"--data": spec.data_path, "--models-dir": models_dir, "--slug": spec.slug}
    batch_size = None if hp.batch_size == "auto" else hp.batch_size  # "auto": the trainer's preset decides
    options |= {"--base-model": spec.base_model or None, "--batch-size": batch_size}
    options |= {"--learning-rate": hp.learning_rate, "--epochs": hp.epochs, "--max-length": hp.max_length}
    # --flag=value: a value that starts with "-" (a path, a model id) is never read as a flag
    job_flags = [f"{flag}={value}" for flag, value in options.items() if value is not None]
    return ["train", *trainer_args, *job_flags, *(["--resume"] if resume else [])]


def import_argv(spec: JobSpec, models_dir: Path) -> list[str]:
    """The arguments after `python -m gateway.reward_serving import`: the source last, after `--`."""
    calibration = [f"--calibration={spec.data_path}"] if spec.data_path else []
    return [f"--models-dir={models_dir}", f"--slug={spec.slug}", *calibration, "--", spec.base_model]


@dataclass(eq=False)
class _Job:
    spec: JobSpec
    resume: bool
    update: JobUpdate = field(default_factory=lambda: JobUpdate(JobState.QUEUED))
    output: TrainerOutput = field(default_factory=TrainerOutput)
    process: asyncio.subprocess.Process | None = None
    task: asyncio.Task[None] | None = None
    cancelled: bool = False
    versions_before: frozenset[int] = frozenset()
    resume_dir: Path | None = None  # the unfinished directory --resume will continue
    directory: Path | None = None
    metrics_offset: int = 0


class JobRunner:
    """Runs training jobs, `concurrency` at a time (1 = one per device), in submission order.

    `trainer_args`: operator flags for every run (--threads, --precision, --save-steps...); `command`:
    the trainer entry point (tests put a fake there); `import_command`: the importer's, for `kind="import"` jobs;
    `env`: the trainers' environment (default: this process's, read at each start); `grace_s`: SIGTERM to
    SIGKILL; `poll_s`: how often progress is read.
    One runner per models_dir: a job's version directory is the one its trainer created.
    """

    def __init__(
        self,
        models_dir: str | os.PathLike[str],
        on_update: OnUpdate,
        *,
        concurrency: int = 1,
        trainer_args: Sequence[str] = (),
        command: Sequence[str] = (sys.executable, "-m", "trainer"),
        import_command: Sequence[str] = (sys.executable, "-m", "gateway.reward_serving", "import"),
        env: Mapping[str, str] | None = None,
        grace_s: float = 10.0,
        poll_s: float = 0.5,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency: must be at least 1")
        self.models_dir = Path(models_dir)
        self._on_update = on_update
        self._concurrency = concurrency
        self._trainer_args = tuple(trainer_args)
        self._command = tuple(command)
        self._import_command = tuple(import_command)
        self._env = env
        self._grace_s = grace_s
        self._poll_s = poll_s
        self._jobs: dict[str, _Job] = {}
        self._queue: deque[_Job] = deque()
        self._running: dict[str, _Job] = {}
        self._closing = False

    async def __aenter__(self) -> JobRunner:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def queued(self) -> tuple[str, ...]:
        return tuple(job.spec.job_id for job in self._queue)

    @property
    def running(self) -> tuple[str, ...]:
        return tuple(self._running)

    async def submit(self, spec: JobSpec, resume: bool = False) -> None:
        """Queue a job (reported QUEUED); `resume` continues its slug's unfinished version directory."""
        if self._closing:
            raise RuntimeError("the job runner is closed")
        if spec.job_id in self._jobs:
            raise ValueError(f"job {spec.job_id} is already queued or running")
        job = _Job(spec, resume)
        self._jobs[spec.job_id] = job
        await self._emit(job, job.update)  # before it can start: QUEUED never reaches the store after TRAINING
        if job.cancelled or self._closing:
            del self._jobs[spec.job_id]
            if job.cancelled:
                await self._emit(job, replace(job.update, state=JobState.ERROR, error="cancelled"))
            return
        self._queue.append(job)
        self._pump()

    async def cancel(self, job_id: str) -> bool:
        """Drop a queued job or stop a running one; both end in ERROR "cancelled". False: not known."""
        job = self._jobs.get(job_id)
        if job is None:
            return False
        job.cancelled = True
        if job in self._queue:
            self._queue.remove(job)
            del self._jobs[job_id]
            await self._emit(job, replace(job.update, state=JobState.ERROR, error="cancelled"))
            return True
        if job.task is None:
            return True  # still being submitted: submit() reports the cancel
        await self._terminate(job)
        await asyncio.shield(job.task)  # the ERROR report and clean-up happen there
        return True

    async def aclose(self) -> None:
        """Stop: queued jobs are dropped and running trainers stopped, neither reported (see the docstring)."""
        self._closing = True
        self._queue.clear()
        running = list(self._running.values())
        await asyncio.gather(*(self._terminate(job) for job in running))
        await asyncio.gather(*(job.task for job in running if job.task), return_exceptions=True)

    # ---------------------------------------------------------------- one job

    def _pump(self) -> None:
        for job in list(self._queue):
            if self._closing or len(self._running) >= self._concurrency:
                return
            if any(r.spec.slug == job.spec.slug for r in self._running.values()):
                continue  # two trainers would pick the same version directory
            self._queue.remove(job)
            self._running[job.spec.job_id] = job
            job.task = asyncio.create_task(self._run(job), name=f"training {job.spec.job_id}")

    async def _run(self, job: _Job) -> None:
        try:
            await self._train(job)
        except Exception as exc:  # a bug here must still end the job: the store would show TRAINING forever
            logger.exception("training job %s failed in the runner", job.spec.job_id)
            await self._emit(job, replace(job.update, state=JobState.ERROR, error=f"runner error: {exc!r}"))
        finally:
            if job.process is not None and job.process.returncode is None:  # this task itself was cancelled
                _signal_group(job.process.pid, signal.SIGKILL)
            self._running.pop(job.spec.job_id, None)
            if self._jobs.get(job.spec.job_id) is job:
                del self._jobs[job.spec.job_id]
            self._pump()

    async def _train(self, job: _Job) -> None:
        if self._closing:
            return  # not started: still QUEUED in the store, submitted afresh after a restart
        if job.cancelled:
            await self._emit(job, replace(job.update, state=JobState.ERROR, error="cancelled"))
            return
        root = self.models_dir / job.spec.slug
        job.versions_before = frozenset(_versions(root))
        unfinished = [n for n in job.versions_before if not (root / f"v{n}" / CARD_FILE).exists()]
        job.resume_dir = root / f"v{max(unfinished)}" if job.resume and unfinished else None  # the trainer's rule
        if job.spec.kind == "import":  # an import starts over: the importer removes what a failed run left
            job.resume_dir = None
            command = [*self._import_command, *import_argv(job.spec, self.models_dir)]
        else:
            argv = trainer_argv(job.spec, self.models_dir, resume=job.resume, trainer_args=self._trainer_args)
            command = [*self._command, *argv]
        env = dict(os.environ if self._env is None else self._env)
        env |= {"TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
        try:
            job.process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,  # its own process group: cancel stops the whole tree
                limit=1 << 20,  # longest stdout line (the resolved config)
            )
        except OSError as exc:
            await self._emit(job, replace(job.update, state=JobState.ERROR, error=f"cannot start the trainer: {exc}"))
            return
        await self._emit(job, replace(job.update, state=JobState.TRAINING, pid=job.process.pid))
        if job.cancelled or self._closing:
            await self._terminate(job)
        await self._finish(job, await self._watch(job, job.process))

    async def _watch(self, job: _Job, proc: asyncio.subprocess.Process) -> int:
        """Read the trainer's output until it exits, reporting progress every poll; returns its exit code."""
        assert proc.stdout is not None and proc.stderr is not None
        readers = asyncio.gather(_read_lines(proc.stdout, job.output), _read_stderr(proc.stderr, job.output))
        while not readers.done():
            await asyncio.wait([readers], timeout=self._poll_s)
            await self._tick(job, emit=not readers.done())
        await readers
        returncode = await proc.wait()
        await self._tick(job, emit=False)  # the final state reports it
        return returncode

    async def _tick(self, job: _Job, *, emit: bool) -> None:
        """Find the version directory, read new metrics lines, report what changed."""
        exited = job.process is not None and job.process.returncode is not None
        if job.directory is None and (job.output.started or exited):
            # The trainer names the version: it is the one that appeared, or the unfinished one it resumes.
            created = set(_versions(self.models_dir / job.spec.slug)) - job.versions_before
            job.directory = self.models_dir / job.spec.slug / f"v{max(created)}" if created else job.resume_dir
            metrics = job.directory / "metrics.jsonl" if job.directory else None
            if metrics and job.directory == job.resume_dir and metrics.exists():
                job.metrics_offset = metrics.stat().st_size  # rows of the interrupted run: stale progress
        if job.directory is not None:
            job.metrics_offset += _read_new_lines(job.directory / "metrics.jsonl", job.metrics_offset, job.output)
        out = job.output
        update = replace(
            job.update, progress=out.progress, directory=job.directory, resumed_from_step=out.resumed_from_step
        )
        if emit and update != job.update:
            await self._emit(job, update)
        job.update = update

    async def _finish(self, job: _Job, returncode: int) -> None:
        card = job.directory / CARD_FILE if job.directory else None
        if returncode == 0 and card and card.exists():  # finished, even if a cancel came too late
            meta = json.loads(card.read_text())
            test, stats = meta["metrics"]["test"], meta["reward_stats"]
            done = replace(
                job.update, state=JobState.DEPLOYED, version=meta["version"], metrics=test, reward_stats=stats
            )
            await self._emit(job, done)
            return
        if self._closing and not job.cancelled:
            return  # stopped by aclose: left unfinished and unreported, to resume after a restart
        if job.cancelled:
            error = "cancelled"
        elif returncode == 0:
            error = f"the trainer exited without writing {CARD_FILE}"
        else:
            error = job.output.error_message(returncode)
        if job.directory is not None and not (job.directory / CARD_FILE).exists():
            # A failed or cancelled job's half-written version would burn its number and never be served.
            await asyncio.to_thread(shutil.rmtree, job.directory, True)
        await self._emit(job, replace(job.update, state=JobState.ERROR, error=error))

    async def _terminate(self, job: _Job) -> None:
        """SIGTERM the trainer's process group, SIGKILL it after the grace period."""
        proc = job.process
        if proc is None or proc.returncode is not None:
            return
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self._grace_s)
        except TimeoutError:
            _signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()
        _signal_group(proc.pid, signal.SIGKILL)  # whatever it started and left behind in its group

    async def _emit(self, job: _Job, update: JobUpdate) -> None:
        job.update = update
        try:
            await self._on_update(job.spec.job_id, update)
        except Exception:  # a failed report must not stop or orphan a training run
            logger.exception("on_update failed for job %s (%s)", job.spec.job_id, update.state)


# ---------------------------------------------------------------- process and file helpers


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _versions(root: Path) -> list[int]:
    if not root.is_dir():
        return []
    return [int(m.group(1)) for p in root.iterdir() if (m := _VERSION_DIR.fullmatch(p.name)) and p.is_dir()]


def _read_new_lines(path: Path, offset: int, output: TrainerOutput) -> int:
    """Feed the complete lines after `offset` to `output`; returns the bytes consumed."""
    if not path.exists():
        return 0
    with path.open("rb") as fh:
        fh.seek(offset)
        data = fh.read()
    complete = data[: data.rfind(b"\n") + 1]  # a line being written is read on the next tick
    output.metrics_text(complete.decode("utf-8", "replace"))
    return len(complete)


async def _read_lines(stream: asyncio.StreamReader, output: TrainerOutput) -> None:
    async for line in stream:
        output.stdout_line(line.decode("utf-8", "replace").rstrip("\r\n"))


async def _read_stderr(stream: asyncio.StreamReader, output: TrainerOutput) -> None:
    while chunk := await stream.read(1 << 16):
        output.stderr_bytes(chunk)
    output.stderr_bytes(b"", final=True)
