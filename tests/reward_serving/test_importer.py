"""`rewardgate-rm import` (gateway/reward_serving/importer.py): published reward models -> the registry's next version.

Tiny "published" checkpoints are built here (a Llama classifier with a chat template, a BERT classifier without
one); the slow tests import classifiers built on the offline bases (MiniLM, SmolLM2-135M-Instruct with its own chat
template) and check the refusals on the bases themselves."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from gateway.formats import load_pairs, render_conversation
from gateway.reward_serving.cli import main
from gateway.reward_serving.engine import TorchRewardEngine
from gateway.reward_serving.importer import PROBE, ImportRefused, check_config, import_model, licence
from gateway.reward_serving.server import ServerSettings, create_app
from tests import tiny
from tests.scripts.test_make_rated_data import load_script
from trainer.config import SAMPLE_DATA

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A published decoder reward model: LlamaForSequenceClassification, one label, its own chat template."""
    return tiny.save_base(tmp_path_factory.mktemp("hub") / "acme-rm-llama", "llama", seed=3)


@pytest.fixture(scope="module")
def published_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.save_base(tmp_path_factory.mktemp("hub") / "acme-rm-bert", "bert", seed=4)


def quiet(line: str) -> None:
    pass


def test_a_decoder_is_imported_with_its_own_chat_template_and_calibrated_on_pairs(
    published: Path, tmp_path: Path
) -> None:
    done = import_model(str(published), tmp_path / "models", "acme-rm", calibration=SAMPLE_DATA, device="cpu",
                        log=quiet)  # fmt: skip
    assert done.directory == tmp_path / "models" / "acme-rm" / "v1" and done.version == "v1"
    card = json.loads((done.directory / "rewardgate.json").read_text())
    assert card["slug"] == "acme-rm" and card["architecture"] == "LlamaForSequenceClassification"
    assert card["source"] == {"kind": "import", "from": str(published), "path": str(published), "revision": None}
    assert card["imported_at"] == card["created_at"] and card["license"] is None and card["max_length"] == 2048
    probe = card["probe"]  # rendered through the model's own template, by the shared render function
    assert probe["template"] == "chat_template" and probe["text"].startswith("<|im_start|>system\n")
    assert probe["text"].endswith("a link arrives by email.<|im_end|>\n")
    assert card["calibration"]["kind"] == "pairs" and card["calibration"]["count"] == 400
    assert len(card["calibration"]["sha256"]) == 64
    assert card["metrics"]["test"]["count"] == 400 and 0 <= card["metrics"]["test"]["accuracy"] <= 1
    stats = card["reward_stats"]
    assert stats["count"] == 800 and stats["std"] > 0 and sum(stats["histogram"]["counts"]) == 800
    # The directory is what the server loads, and scores like the original checkpoint through the same render.
    engine = TorchRewardEngine.load(done.directory, device="cpu")
    original = tiny.llama_reward_model(tiny.chat_tokenizer(), seed=3)
    tok = tiny.chat_tokenizer()
    import torch

    ids = torch.tensor([render_conversation(tok, PROBE, 2048).input_ids])
    with torch.inference_mode():
        expected = float(original(input_ids=ids).logits[0, 0])
    assert engine.score([PROBE])[0] == pytest.approx(expected, abs=1e-5) == pytest.approx(probe["score"], abs=1e-5)
    engine.close()


def test_an_encoder_without_a_template_calibrates_on_rated_responses_of_one_split(
    published_encoder: Path, tmp_path: Path
) -> None:
    ratings = tmp_path / "ratings.jsonl"
    ratings.write_text("".join(json.dumps(r) + "\n" for r in load_script().rated_rows(limit=60)))
    done = import_model(str(published_encoder), tmp_path / "m", "bert-rm", calibration=str(ratings),
                        calibration_split="TEST", device="cpu", log=quiet)  # fmt: skip
    card = done.card
    assert card["probe"]["template"] == "plain" and card["probe"]["text"].startswith("[CLS]System: You are a helpful")
    assert card["calibration"] == card["calibration"] | {"kind": "rated", "split": "TEST", "count": 20}
    assert card["reward_stats"]["count"] == 20 and card["reward_stats"]["split"] == "TEST"
    assert card["metrics"]["test"] == {"count": 20}


def test_without_calibration_the_stats_are_the_gateways_fallback_and_versions_count_up(
    published: Path, tmp_path: Path
) -> None:
    first = import_model(str(published), tmp_path, "acme-rm", device="cpu", log=quiet)
    second = import_model(str(published), tmp_path, "acme-rm", device="cpu", max_length=128, log=quiet)
    assert (first.version, second.version) == ("v1", "v2") and second.card["max_length"] == 128
    assert first.card["reward_stats"] == {"mean": 0.0, "std": 1.0, "count": 0, "split": None, "histogram": None}


def bert_config(**changes: object) -> dict[str, object]:
    return {"architectures": ["BertForSequenceClassification"], "id2label": {"0": "LABEL_0"}, **changes}


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        (bert_config(id2label={"0": "helpful", "1": "harmless", "2": "honest"}),
         "BertForSequenceClassification has 3 labels (helpful, harmless, honest): a multi-label classifier"),
        ({"architectures": ["BertForSequenceClassification"]}, "has 2 labels (none named)"),
        ({"architectures": ["LlamaForCausalLM"]}, "found LlamaForCausalLM, not a *ForSequenceClassification"),
        ({"architectures": ["BertModel"], "id2label": {"0": "x"}}, "found BertModel"),
        ({}, "names no architecture"),
        (bert_config(auto_map={"AutoModel": "modeling.RM"}), "the model needs its own code (auto_map: ['AutoModel'])"),
    ],
)  # fmt: skip
def test_what_is_not_a_one_label_classifier_is_refused_naming_what_was_found(
    config: dict[str, object], needle: str
) -> None:
    with pytest.raises(ImportRefused, match=None) as info:
        check_config(config, "acme/rm")
    assert needle in str(info.value) and str(info.value).startswith("acme/rm: ")
    assert check_config(bert_config(num_labels=1), "x") == "BertForSequenceClassification"


def test_refusals_and_bad_calibration_lines_leave_no_version_behind(tmp_path: Path) -> None:
    multi = tmp_path / "multi"
    tok = tiny.plain_tokenizer()
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=3)  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(multi)
    causal = tiny.save_causal_lm(tmp_path / "causal")
    for source, needle in ((multi, "has 3 labels"), (causal, "found LlamaForCausalLM"),
                           (tmp_path / "nope", "no such directory"), (tmp_path, "no config.json")):  # fmt: skip
        with pytest.raises(ImportRefused, match=None) as info:
            import_model(str(source), tmp_path / "models", "rm", log=quiet)
        assert needle in str(info.value)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(Path(SAMPLE_DATA).read_text().splitlines()[0] + "\n{oops\n[]\n")
    good = tiny.save_base(tmp_path / "good", "bert")
    with pytest.raises(ValueError, match="2 invalid line"):
        import_model(str(good), tmp_path / "models", "rm", calibration=str(bad), log=quiet)
    assert not (tmp_path / "models").exists()
    with pytest.raises(ValueError, match="slug"):
        import_model(str(good), tmp_path / "models", "Not A Slug", log=quiet)


def test_a_failure_after_the_directory_exists_removes_it(published: Path, tmp_path: Path) -> None:
    empty_test = tmp_path / "train_only.jsonl"
    empty_test.write_text(Path(SAMPLE_DATA).read_text().splitlines()[0].replace('"TEST"', '"TRAIN"') + "\n")
    with pytest.raises(ValueError, match="no TEST records"):
        import_model(str(published), tmp_path / "m", "rm", calibration=str(empty_test), calibration_split="TEST",
                     log=quiet)  # fmt: skip
    assert list((tmp_path / "m" / "rm").iterdir()) == []


def test_the_licence_comes_from_the_config_else_the_readme(tmp_path: Path) -> None:
    assert licence(tmp_path, {"license": "apache-2.0"}) == "apache-2.0"
    (tmp_path / "README.md").write_text("---\nlanguage: en\nlicense: 'llama3.1'\n---\n# A reward model\n")
    assert licence(tmp_path, {}) == "llama3.1"
    (tmp_path / "README.md").write_text("# no front matter\nlicense: mit\n")
    assert licence(tmp_path, {}) is None


def test_the_cli_imports_prints_a_summary_and_refuses_with_exit_1(
    published: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["import", str(published), "--models-dir", str(tmp_path), "--slug", "acme-rm", "--device", "cpu"]
    assert main([*argv, "--calibration", SAMPLE_DATA, "--calibration-split", "TEST"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("\n{") :])
    assert summary["version"] == "v1" and summary["metrics"]["count"] == 42 and summary["probe"] == "chat_template"
    assert out.startswith("config: ") and "probe: " in out and "calibration: 42 pairs (TEST)" in out
    assert main(["import", str(tmp_path), "--models-dir", str(tmp_path), "--slug", "x"]) == 1
    assert "no config.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["import", str(published)])  # --models-dir and --slug are required


@pytest.mark.anyio
async def test_the_imported_version_is_served_by_slug(published: Path, tmp_path: Path) -> None:
    import_model(str(published), tmp_path, "acme-rm", calibration=SAMPLE_DATA, calibration_split="TEST", device="cpu",
                 log=quiet)  # fmt: skip
    app = create_app(ServerSettings(models_dir=str(tmp_path), device="cpu"))
    pair = load_pairs(SAMPLE_DATA).split("TEST")[0]
    conversations = [[m.to_dict() for m in c] for c in (pair.chosen_conversation, pair.rejected_conversation)]
    async with app.router.lifespan_context(app):
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rm")
        async with client:
            listing = (await client.get("/v1/models")).json()["data"]
            assert [m["id"] for m in listing] == ["acme-rm@v1"] and listing[0]["reward_stats"]["count"] == 84
            scored = await client.post("/v1/score", json={"model": "acme-rm", "conversations": conversations})
    assert scored.status_code == 200 and scored.json()["version"] == "v1" and len(scored.json()["data"]) == 2


# ---------------------------------------------------------------- the offline bases


def test_the_offline_minilm_base_is_refused_it_has_no_classification_head(tmp_path: Path) -> None:
    from trainer.bases import resolve_base

    with pytest.raises(ImportRefused, match="found BertModel, not a \\*ForSequenceClassification"):
        import_model(resolve_base("minilm"), tmp_path, "minilm", log=quiet)


@pytest.mark.slow
@pytest.mark.parametrize(("alias", "template"), [("minilm", "plain"), ("smollm2", "chat_template")])
def test_classifiers_published_on_the_offline_bases_import_with_their_own_templates(
    tmp_path: Path, alias: str, template: str
) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trainer.bases import resolve_base

    base = resolve_base(alias)
    published = tmp_path / f"published-{alias}"
    AutoModelForSequenceClassification.from_pretrained(base, num_labels=1).save_pretrained(published)
    AutoTokenizer.from_pretrained(base).save_pretrained(published)
    done = import_model(str(published), tmp_path / "models", alias, calibration=SAMPLE_DATA,
                        calibration_split="TEST", device="cpu", log=quiet)  # fmt: skip
    probe = done.card["probe"]
    assert probe["template"] == template and done.card["reward_stats"]["count"] == 84
    if alias == "smollm2":  # SmolLM2's own ChatML template, with its default system prompt handling
        assert "<|im_start|>user\nHow do I reset my password?<|im_end|>" in probe["text"]
        with pytest.raises(ImportRefused, match="found LlamaForCausalLM"):  # the base itself has no score head
            import_model(base, tmp_path / "models", "raw", log=quiet)
