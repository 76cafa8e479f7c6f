"""THE shared data format, one module per subject: messages and what every record shares (messages), preference
pairs (pairs, DESIGN contract 1), rated responses (rated), reading JSONL files of either (files), and the one
conversation -> tokens render function and reward pooling rule of contract 2 (rendering), used by the trainer,
the reward server and the importer of published reward models, and the rank statistics both sides compute
(correlation). Import names from here: `from gateway.formats import load_pairs`. Must not import starlette, httpx,
litellm, torch or transformers: tokenizers and models are passed in as arguments and used through their methods only.
"""

from __future__ import annotations

from .correlation import pearson, ranks, spearman
from .files import (
    DataKind,
    PairSet,
    RatedSet,
    data_kind,
    iter_pairs,
    iter_rated,
    iter_records,
    load_data,
    load_pairs,
    load_rated,
    without_bom,
)
from .messages import (
    PAIR_KEYS,
    ROLES,
    SPLITS,
    TEST_FRACTION_PER_MILLE,
    DatasetError,
    LineError,
    Message,
    PairError,
    Split,
    is_rated,
    loose_message,
    parse_message,
    split_for_prompt,
)
from .pairs import (
    PreferencePair,
    parse_line,
    parse_pair,
)
from .rated import (
    RatedResponse,
    parse_rated,
    parse_rated_line,
    parse_record,
    parse_record_line,
)
from .rendering import (
    Rendered,
    group_by_prompt,
    pool_logits,
    pool_rewards,
    render_conversation,
    render_many,
    render_responses,
    reward_histogram,
)

__all__ = [
    "PAIR_KEYS",
    "ROLES",
    "SPLITS",
    "TEST_FRACTION_PER_MILLE",
    "DataKind",
    "DatasetError",
    "LineError",
    "Message",
    "PairError",
    "PairSet",
    "PreferencePair",
    "RatedResponse",
    "RatedSet",
    "Rendered",
    "Split",
    "data_kind",
    "group_by_prompt",
    "is_rated",
    "iter_pairs",
    "iter_rated",
    "iter_records",
    "load_data",
    "load_pairs",
    "load_rated",
    "loose_message",
    "parse_line",
    "parse_message",
    "parse_pair",
    "parse_rated",
    "parse_rated_line",
    "parse_record",
    "parse_record_line",
    "pearson",
    "pool_logits",
    "pool_rewards",
    "ranks",
    "render_conversation",
    "render_many",
    "render_responses",
    "reward_histogram",
    "spearman",
    "split_for_prompt",
    "without_bom",
]
