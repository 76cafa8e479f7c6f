"""JobRunner with the real trainer as a subprocess on a tiny random model and a 20-pair dataset (seconds per
run), plus the pure parts (command line, output parsing) and a fake trainer for the kill-the-tree path.
Nothing sleeps to wait: updates are awaited and files polled with a deadline (`until`)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.service.training import (
    DEFAULT_LEARNING_RATE,
    Hyperparameters,
    JobRunner,
    JobSpec,
    JobState,
    JobUpdate,
    TrainerOutput,
    base_models,
    import_argv,
    trainer_argv,
)
from tests.gateway.fakes import until

pytestmark = pytest.mark.anyio
# Small and quick: one torch thread each (2 jobs may share 2 cores), fp32 (no bf16 autodetect), every step logged.
FAST = ("--threads=1", "--precision=fp32", "--log-every=1")
RUN_S = 60.0  # deadline for one trainer run on a loaded 2-core machine (a run takes about 6 s)


def write_pairs(path: Path, train: int = 16, test: int = 4) -> Path:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"How do I reset my password, case {i}?"},
                {"role": "assistant", "content": "Open settings, choose security, then reset."},
            ],
            "rejected_message": {"role": "assistant", "content": "I cannot help with that."},
            "split": "TRAIN" if i < train else "TEST",
        }
        for i in range(train + test)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_pairs(tmp_path / "pairs.jsonl")


class Recorder:
    """on_update that keeps every report and wakes whoever waits on one."""

    def __init__(self) -> None:
        self.updates: list[tuple[str, JobUpdate]] = []
        self._changed = asyncio.Event()

    async def __call__(self, job_id: str, update: JobUpdate) -> None:
        self.updates.append((job_id, update))
        self._changed.set()

    def of(self, job_id: str) -> list[JobUpdate]:
        return [u for j, u in self.updates if j == job_id]

    def states(self, job_id: str) -> list[JobState]:
        return list(dict.fromkeys(u.state for u in self.of(job_id)))

    def last(self, job_id: str) -> JobUpdate:
        return self.of(job_id)[-1]

    async def wait(self, condition: Callable[[], bool], timeout: float = RUN_S) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    async def ended(self, job_id: str, timeout: float = RUN_S) -> JobUpdate:
        done = (JobState.DEPLOYED, JobState.ERROR)
        await self.wait(lambda: bool(self.of(job_id)) and self.last(job_id).state in done, timeout)
        return self.last(job_id)

    def index(self, job_id: str, state: JobState) -> int:
        return next(i for i, (j, u) in enumerate(self.updates) if j == job_id and u.state == state)


def spec(job_id: str, slug: str, data: Path, base: Path, **hp: object) -> JobSpec:
    options: dict[str, object] = {"batch_size": 4, "epochs": 2, "learning_rate": 1e-3, "max_length": 256} | hp
    return JobSpec(job_id, slug, str(data), str(base), Hyperparameters(**options))  # type: ignore[arg-type]


# ---------------------------------------------------------------- pure parts


def test_command_line_carries_hyperparameters_operator_flags_and_resume(tmp_path: Path) -> None:
    job = JobSpec("job_1", "support-rm", "-odd.jsonl", "minilm", Hyperparameters(8, 2e-5, 3, 128))
    assert trainer_argv(job, tmp_path, resume=True, trainer_args=("--save-steps=50", "--epochs=1")) == [
        "train",
        "--save-steps=50",  # the operator's defaults first: the job's own flags override them
        "--epochs=1",
        "--data=-odd.jsonl",  # "=": a value starting with "-" is not a flag
        f"--models-dir={tmp_path}",
        "--slug=support-rm",
        "--base-model=minilm",
        "--batch-size=8",
        "--learning-rate=2e-05",
        "--epochs=3",
        "--max-length=128",
        "--resume",
    ]
    plain = trainer_argv(JobSpec("job_2", "rm", "d.jsonl"), tmp_path)
    assert plain == ["train", "--data=d.jsonl", f"--models-dir={tmp_path}", "--slug=rm"]  # "auto": the preset's


def test_the_trainer_parser_accepts_the_command_line(tmp_path: Path) -> None:
    from trainer.cli import build_parser
    from trainer.config import PRESETS, from_namespace

    job = JobSpec("job_1", "rm", "d.jsonl", "/models/base", Hyperparameters("auto", 3e-4, 1, 64))
    cfg = from_namespace(build_parser().parse_args(trainer_argv(job, tmp_path, resume=True)))
    assert (cfg.data, cfg.models_dir, cfg.slug, cfg.base_model) == ("d.jsonl", str(tmp_path), "rm", "/models/base")
    preset = PRESETS["default"]
    assert (cfg.batch_size, cfg.learning_rate, cfg.epochs, cfg.max_length, cfg.resume) == (
        preset.get("batch_size", "auto"),
        3e-4,
        1,
        64,
        True,
    )


def test_an_import_jobs_command_line_parses_with_the_source_last(tmp_path: Path) -> None:
    from gateway.reward_serving.cli import import_parser

    job = JobSpec("job_3", "acme-rm", "/jobs/job_3/calibration.jsonl", "-odd/dir", kind="import")
    argv = import_argv(job, tmp_path)
    args = import_parser().parse_args(argv)
    assert (args.source, args.models_dir, args.slug) == ("-odd/dir", str(tmp_path), "acme-rm")  # a "-" source stays one
    assert args.calibration == "/jobs/job_3/calibration.jsonl"
    assert "--calibration" not in " ".join(import_argv(JobSpec("j", "rm", "", "acme/rm", kind="import"), tmp_path))
    with pytest.raises(ValueError, match="source"):
        JobSpec("j", "rm", "", "", kind="import")
    with pytest.raises(ValueError, match="data_path"):
        JobSpec("j", "rm", "")


@pytest.mark.parametrize(
    "make",
    [
        lambda: Hyperparameters(batch_size=0),
        lambda: Hyperparameters(learning_rate=0.0),
        lambda: Hyperparameters(epochs=0),
        lambda: JobSpec("job_1", "Bad Slug", "d.jsonl"),
        lambda: JobSpec("", "rm", "d.jsonl"),
    ],
)
def test_bad_specs_fail_at_submit_time_not_in_the_trainer(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()


def test_base_models_match_the_trainer_aliases() -> None:
    from trainer.bases import ALIASES, DEFAULT_BASE  # trainer.bases imports no torch; the gateway copies it

    models = base_models()
    assert {m.id for m in models} == set(ALIASES.values())
    assert {name for m in models for name in (m.id, *m.aliases)} == set(ALIASES)
    assert [m.id for m in models if m.default] == [DEFAULT_BASE]


def test_the_default_learning_rate_is_the_trainers() -> None:
    from trainer.config import TrainConfig  # no torch at import

    assert TrainConfig.from_preset("default").learning_rate == DEFAULT_LEARNING_RATE


def test_output_parsing_progress_bars_and_error_lines() -> None:
    out = TrainerOutput()
    out.stdout_line('config: {"slug": "rm"}')
    out.stdout_line("resumed from step-6.pt: epoch 1, batch 2, step 6")
    assert out.started and out.resumed_from_step == 6 and out.progress is None
    # tqdm redraws with \r; a bar may be split anywhere, even inside a UTF-8 character
    bar = (
        "\rLoading weights: 100%|██| 21/21 [00:00<00:00]\n\rtrain:  40%|████  | 4/10 [00:01<00:01, 3.1step/s]".encode()
    )
    out.stderr_bytes(bar[:50])
    out.stderr_bytes(bar[50:])
    assert out.progress is not None and (out.progress.step, out.progress.total) == (4, 10)
    out.metrics_text('{"kind": "train", "step": 5, "loss": 0.61, "accuracy": 0.75}\nnot json\n{"kind": "eval"}\n')
    assert out.progress == type(out.progress)(5, 10, 0.61, 0.75)
    assert out.error_message(-9) == "trainer killed by SIGKILL"  # bars are not error lines

    traceback = (
        "Some weights were not initialized\n"
        "Traceback (most recent call last):\n"
        '  File "/x/train.py", line 64, in train\n'
        "    tokenizer = AutoTokenizer.from_pretrained(base)\n"
        "                ^^^^^^^^^^^^^^^^\n"
        "OSError: /nowhere is not a local folder\n"
    )
    out.stderr_bytes(traceback.encode(), final=True)
    assert out.error_message(1) == "OSError: /nowhere is not a local folder"
    clean = TrainerOutput()
    clean.stderr_bytes(b"warning: something\nerror: d.jsonl: 1 invalid line(s); first: line 1: bad\n", final=True)
    assert clean.error_message(1) == "warning: something\nerror: d.jsonl: 1 invalid line(s); first: line 1: bad"
    assert TrainerOutput().error_message(3) == "trainer exited with code 3"


# ---------------------------------------------------------------- the real trainer


async def test_jobs_run_one_at_a_time_queued_training_deployed(tmp_path: Path, data: Path, base: Path) -> None:
    record = Recorder()
    models = tmp_path / "models"
    async with JobRunner(models, record, trainer_args=FAST, poll_s=0.05) as runner:
        await runner.submit(spec("job_a", "support-rm", data, base))
        await runner.submit(spec("job_b", "support-rm", data, base, epochs=1))
        assert runner.running == ("job_a",) and runner.queued == ("job_b",)
        first = await record.ended("job_a")
        second = await record.ended("job_b")

    assert record.states("job_a") == [JobState.QUEUED, JobState.TRAINING, JobState.DEPLOYED]
    assert record.states("job_b") == [JobState.QUEUED, JobState.TRAINING, JobState.DEPLOYED]
    assert record.index("job_b", JobState.TRAINING) > record.index("job_a", JobState.DEPLOYED)  # never overlapping
    assert first.error is None and first.version == "v1" and first.directory == models / "support-rm" / "v1"
    assert second.version == "v2" and (models / "support-rm" / "v2" / "rewardgate.json").exists()
    card = json.loads((models / "support-rm" / "v1" / "rewardgate.json").read_text())
    assert first.metrics is not None and first.metrics == card["metrics"]["test"] and first.metrics["count"] == 4
    assert first.reward_stats == card["reward_stats"]
    # 16 TRAIN pairs / batch 4 = 4 steps per epoch, 2 epochs
    steps = [u.progress for u in record.of("job_a") if u.state == JobState.TRAINING and u.progress]
    assert steps and steps[-1].total == 8 and all(p.total in (None, 8) for p in steps)
    assert [p.step for p in steps] == sorted(p.step for p in steps)
    assert first.progress is not None and first.progress.step == 8 and first.progress.loss is not None
    assert first.resumed_from_step is None and first.pid is not None


async def test_cancel_a_queued_and_a_running_job_one_slug_at_a_time(tmp_path: Path, data: Path, base: Path) -> None:
    record = Recorder()
    models = tmp_path / "models"
    async with JobRunner(models, record, concurrency=2, trainer_args=FAST, poll_s=0.05) as runner:
        await runner.submit(spec("job_a", "rm-x", data, base, epochs=500))
        await runner.submit(spec("job_b", "rm-x", data, base))  # same slug: waits although a slot is free
        await runner.submit(spec("job_c", "rm-y", data, base, epochs=500))
        assert runner.running == ("job_a", "job_c") and runner.queued == ("job_b",)

        assert await runner.cancel("job_b")
        assert record.states("job_b") == [JobState.QUEUED, JobState.ERROR] and record.last("job_b").error == "cancelled"
        await record.wait(lambda: record.last("job_a").directory is not None)  # the trainer made its version
        pid = record.last("job_a").pid
        assert pid is not None
        assert await runner.cancel("job_a")
        assert record.last("job_a").state == JobState.ERROR and record.last("job_a").error == "cancelled"
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)  # the whole process group is gone
        assert not list((models / "rm-x").glob("v*"))  # the half-written version is removed
        assert await runner.cancel("job_c")
        assert not await runner.cancel("job_a") and not await runner.cancel("nope")
        assert runner.running == () and runner.queued == ()
    assert JobState.TRAINING not in record.states("job_b")


async def test_bad_data_and_bad_base_model_end_in_a_readable_error(tmp_path: Path, data: Path, base: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}], "rejected_message": {"role": "assistant"}}\n')
    record = Recorder()
    models = tmp_path / "models"
    async with JobRunner(models, record, concurrency=2, trainer_args=FAST, poll_s=0.05) as runner:
        await runner.submit(spec("job_data", "rm-data", bad, base))
        await runner.submit(spec("job_base", "rm-base", data, tmp_path / "no-such-model"))
        data_error = await record.ended("job_data")
        base_error = await record.ended("job_base")
    assert data_error.state == base_error.state == JobState.ERROR
    assert data_error.error is not None and "line 1" in data_error.error
    assert "last message must be the assistant's preferred answer" in data_error.error
    assert base_error.error is not None and "no-such-model" in base_error.error
    for error in (data_error.error, base_error.error):
        assert "Traceback" not in error and 'File "' not in error and len(error.splitlines()) <= 5
    assert not list(models.glob("*/v*"))  # nothing half-written is left for the registry to trip over


async def test_a_restart_resumes_in_the_same_version_directory(tmp_path: Path, data: Path, base: Path) -> None:
    models = tmp_path / "models"
    job = spec("job_r", "support-rm", data, base, epochs=30)  # 120 steps: still running when stopped
    flags = (*FAST, "--save-steps=2")
    before = Recorder()
    runner = JobRunner(models, before, trainer_args=flags, poll_s=0.05)
    await runner.submit(job)
    await before.wait(lambda: before.last("job_r").directory is not None)
    version = before.last("job_r").directory
    assert version == models / "support-rm" / "v1"
    await until(lambda: any((version / "checkpoints").glob("step-*.pt")), timeout=RUN_S)
    await runner.aclose()  # the gateway stops: the job stays TRAINING in the store, unreported
    assert before.states("job_r") == [JobState.QUEUED, JobState.TRAINING]
    assert not (version / "rewardgate.json").exists() and any((version / "checkpoints").glob("step-*.pt"))

    after = Recorder()
    async with JobRunner(models, after, trainer_args=flags, poll_s=0.05) as restarted:
        await restarted.submit(job, resume=True)
        done = await after.ended("job_r")
    assert done.state == JobState.DEPLOYED, done.error
    assert done.version == "v1" and done.directory == version
    assert done.resumed_from_step is not None and done.resumed_from_step >= 2
    assert sorted(p.name for p in (models / "support-rm").iterdir()) == ["v1"]
    card = json.loads((version / "rewardgate.json").read_text())
    assert card["training"]["steps"] == 120 and not (version / "checkpoints").exists()


# ---------------------------------------------------------------- a fake trainer: the kill path


async def test_cancel_kills_a_trainer_that_ignores_sigterm_and_its_children(tmp_path: Path) -> None:
    child_pid = tmp_path / "child.pid"
    script = (
        "import signal, subprocess, sys\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import signal; signal.pause()'])\n"
        f"open({str(child_pid)!r}, 'w').write(str(child.pid))\n"
        "signal.pause()\n"
    )
    record = Recorder()
    async with JobRunner(tmp_path, record, command=(sys.executable, "-c", script), grace_s=0.2) as runner:
        await runner.submit(JobSpec("job_f", "rm", "d.jsonl"))
        await until(lambda: child_pid.exists() and child_pid.read_text() != "", timeout=RUN_S)
        assert await runner.cancel("job_f")
    assert record.last("job_f").error == "cancelled"
    pid = int(child_pid.read_text())
    await until(lambda: not _alive(pid), timeout=5)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a killed child of a killed parent is a zombie until init reaps it
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


async def test_a_failing_on_update_does_not_stop_jobs_and_exit_codes_become_errors(tmp_path: Path) -> None:
    record = Recorder()

    async def flaky(job_id: str, update: JobUpdate) -> None:
        await record(job_id, update)
        if update.state == JobState.QUEUED:
            raise RuntimeError("store is down")

    fails = "import sys; print('noise', file=sys.stderr); print('error: boom', file=sys.stderr); sys.exit(2)"
    async with JobRunner(tmp_path, flaky, command=(sys.executable, "-c", fails)) as runner:
        await runner.submit(JobSpec("job_1", "rm", "d.jsonl"))
        assert (await record.ended("job_1")).error == "noise\nerror: boom"
    async with JobRunner(tmp_path, record, command=(sys.executable, "-c", "pass")) as runner:
        await runner.submit(JobSpec("job_2", "rm", "d.jsonl"))
        assert (await record.ended("job_2")).error == "the trainer exited without writing rewardgate.json"
