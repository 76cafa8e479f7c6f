from __future__ import annotations

import pytest

from gateway.formats import Message, PreferencePair, RatedResponse, RatedSet, load_pairs, render_responses
from tests import tiny
from trainer.config import SAMPLE_DATA, TrainConfig
from trainer.data import (
    TokenizedPair,
    collate,
    length_grouped_batches,
    prefix_pairs,
    tokenize_pairs,
    tokenize_rated,
    training_data,
)
from trainer.objective import Pointwise


def pair(prompt: str, chosen: str, rejected: str) -> PreferencePair:
    return PreferencePair(
        (Message("user", prompt),), Message("assistant", chosen), Message("assistant", rejected), "TRAIN"
    )


def test_long_prompts_are_trimmed_and_long_answers_kept_cut_or_dropped_and_all_counted() -> None:
    tok = tiny.chat_tokenizer()
    long_answer = "an extremely long answer " * 40
    pairs = [
        pair("short question", "good answer", "bad answer"),
        pair("a very long question " * 40, "good answer", "bad answer"),
        pair("short question", long_answer, "bad answer"),
    ]
    examples, report = tokenize_pairs(pairs, tok, max_length=64)  # the default: keep the answer's head
    # the cut answer fills the whole budget, so its prompt is trimmed too (formats.render_responses' rule)
    assert report.to_dict() == {"pairs_in": 3, "prompts_trimmed": 2, "answers_cut": 1, "dropped": 0}
    assert len(examples) == 3 and all(len(e.chosen) <= 64 and len(e.rejected) <= 64 for e in examples)
    # the trimmed pair still ends with its whole answer; the cut one is its answer's head, as the server scores it
    assert tok.decode(examples[1].chosen).rstrip().endswith("good answer<|im_end|>")
    served = render_responses(tok, pairs[2].prompt, [pairs[2].chosen], 64)[0]
    assert examples[2].chosen == served.input_ids and served.response_tokens_truncated > 0
    assert (examples[2].chosen_chars, examples[2].rejected_chars) == (len(long_answer), len("bad answer"))
    kept, report = tokenize_pairs(pairs, tok, max_length=64, long_answers="drop")
    assert report.to_dict() == {"pairs_in": 3, "prompts_trimmed": 1, "answers_cut": 0, "dropped": 1}
    assert len(kept) == 2


def test_length_grouped_batches_cover_every_index_once_and_cut_padding() -> None:
    lengths = [(i * 37) % 500 + 10 for i in range(1000)]
    batches = length_grouped_batches(lengths, batch_size=8, seed=3)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(1000))
    assert batches == length_grouped_batches(lengths, batch_size=8, seed=3)
    assert batches != length_grouped_batches(lengths, batch_size=8, seed=4)

    def padding(bs: list[list[int]]) -> int:
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)

    naive = [list(range(i, min(i + 8, 1000))) for i in range(0, 1000, 8)]
    assert padding(batches) < padding(naive) / 5


def test_collate_puts_chosen_rows_first_right_padded_with_a_mask() -> None:
    batch = [TokenizedPair((1, 2, 3), (4,), 0.5, 30, 4), TokenizedPair((5,), (6, 7), 0.0, 5, 70)]
    out = collate(batch, pad_id=0)
    assert out["input_ids"].tolist() == [[1, 2, 3], [5, 0, 0], [4, 0, 0], [6, 7, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 0, 0], [1, 1, 0]]
    assert out["margin"].tolist() == pytest.approx([0.5, 0.0])
    assert out["length"].tolist() == [30, 5, 4, 70]  # the answers' lengths, in the rows' order


def test_training_data_samples_at_most_max_pairs_of_train_and_keeps_test_whole() -> None:
    tok, dataset = tiny.chat_tokenizer(), load_pairs(SAMPLE_DATA)
    data = training_data(TrainConfig(max_pairs=16, max_length=1024), dataset, tok)
    again = training_data(TrainConfig(max_pairs=16, max_length=1024), dataset, tok)
    assert len(data.train) == len(data.examples) == 16 and data.train == again.train  # seeded
    assert all(p.split == "TRAIN" for p in data.train) and data.test == dataset.split("TEST")
    assert "training on 16 pairs" in data.summary()
    assert len(training_data(TrainConfig(max_length=1024), dataset, tok).train) == len(dataset.split("TRAIN"))


def test_training_data_refuses_a_max_length_no_train_pair_fits() -> None:
    with pytest.raises(ValueError, match="no TRAIN pairs fit max_length=8"):
        training_data(
            TrainConfig(max_pairs=4, max_length=8, long_answers="drop"), load_pairs(SAMPLE_DATA), tiny.chat_tokenizer()
        )


def test_rated_responses_tokenize_with_their_targets_and_truncation_rule() -> None:
    tok = tiny.chat_tokenizer()
    rows = [
        RatedResponse((Message("user", "short question"),), Message("assistant", "good answer"), 5.0, "TRAIN", 2.0),
        RatedResponse((Message("user", "a long question " * 40),), Message("assistant", "fine"), 3.0, "TRAIN"),
        RatedResponse((Message("user", "q"),), Message("assistant", "a very long answer " * 40), 1.0, "TRAIN"),
    ]
    objective = Pointwise("regression", 3.0, 2.0)
    examples, report = tokenize_rated(rows, tok, 64, objective, long_answers="drop")
    assert report.to_dict() == {"rows_in": 3, "prompts_trimmed": 1, "answers_cut": 0, "dropped": 1}
    assert [(e.target, e.weight) for e in examples] == [(1.0, 2.0), (0.0, 1.0)]
    assert tokenize_rated(rows, tok, 64, objective)[1].to_dict()["answers_cut"] == 1
    assert tok.decode(examples[0].ids).endswith("good answer<|im_end|>\n")
    out = collate(examples, pad_id=0)
    assert out["input_ids"].shape[0] == 2 and out["target"].tolist() == [1.0, 0.0] and out["weight"].tolist() == [2, 1]
    assert out["attention_mask"].sum(dim=1).tolist() == [len(e.ids) for e in examples]


def test_training_data_of_rated_responses_chooses_the_loss_from_train() -> None:
    rows = [
        RatedResponse((Message("user", f"q{i}"),), Message("assistant", f"a{i}"), float(i % 2), split)
        for i, split in enumerate(["TRAIN"] * 6 + ["TEST"] * 2)
    ]
    data = training_data(TrainConfig(max_length=64), RatedSet(tuple(rows)), tiny.chat_tokenizer())
    assert data.unit == "rows" and len(data.examples) == 6 and len(data.test) == 2
    assert isinstance(data.objective, Pointwise) and data.objective.loss_name == "binary_cross_entropy"
    assert data.summary().startswith("8 rated responses (TRAIN 6, TEST 2, 0/1 labels); training on 6 rows")
    with pytest.raises(ValueError, match="no TRAIN rows"):
        training_data(TrainConfig(), RatedSet(tuple(rows[6:])), tiny.chat_tokenizer())


def test_partial_prefixes_add_each_pair_cut_to_a_drawn_head_with_its_preference() -> None:
    tok = tiny.chat_tokenizer()
    long_good, long_bad = "the right steps are these " * 20, "try turning it off and on " * 20
    pairs = [pair("q1", long_good, long_bad), pair("q2", "ok", "no"), pair("q3", long_good, "short")]
    copies = prefix_pairs(pairs, tok, [4], seed=0)
    # the pair whose answers both fit in 4 tokens adds nothing; the others come back cut, preference kept
    assert [c.prompt for c in copies] == [pairs[0].prompt, pairs[2].prompt]
    for copy, whole in zip(copies, (pairs[0], pairs[2]), strict=True):
        for cut, full in ((copy.chosen, whole.chosen), (copy.rejected, whole.rejected)):
            assert full.content.startswith(cut.content)
            assert len(tok(cut.content, add_special_tokens=False)["input_ids"]) == min(
                4, len(tok(full.content, add_special_tokens=False)["input_ids"])
            )
    assert copies[1].rejected.content == "short" and copies[0].chosen.content != long_good
    # the cut is drawn from the list, seeded: the same seed gives the same copies
    drawn = prefix_pairs(pairs * 10, tok, [2, 8], seed=3)
    assert drawn == prefix_pairs(pairs * 10, tok, [2, 8], seed=3)
    assert {len(tok(c.chosen.content, add_special_tokens=False)["input_ids"]) for c in drawn} == {2, 8}

    dataset = load_pairs(SAMPLE_DATA)
    plain = training_data(TrainConfig(max_pairs=40, max_length=128), dataset, tok)
    data = training_data(TrainConfig(max_pairs=40, max_length=128, partial_prefixes="8,16"), dataset, tok)
    added = data.truncation.to_dict()["partial_prefix_pairs"]
    assert 0 < added <= 40 and len(data.examples) == len(plain.examples) + added
    assert data.truncation.pairs_in == 40 and "partial_prefix_pairs" not in plain.truncation.to_dict()


@pytest.mark.parametrize("bad", ["0", "a,b", "32,-4", ","])
def test_partial_prefixes_refuse_what_is_not_a_list_of_token_counts(bad: str) -> None:
    with pytest.raises(ValueError, match="partial_prefixes"):
        TrainConfig(partial_prefixes=bad)
