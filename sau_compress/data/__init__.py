"""QA data for unlearning and evaluation: loading, prompt formatting, tokenization with label masking, batches.

Modules, one job each: :mod:`~sau_compress.data.loading` (QA sets from files, folders and the hub,
:class:`QASetSpec`, the forget/retain overlap check, the TOFU folder lookup), :mod:`~sau_compress.data.prompts`
(the prompt formats ``plain``/``chat``/``auto``, tokenization with labels ``-100`` on the prompt, the padding id)
and :mod:`~sau_compress.data.batches` (collation into padded tensors, the plans of which items each step reads).
"""

from __future__ import annotations

from sau_compress.data.batches import collate, pair_forget_retain, sequential_batches, spread_batches
from sau_compress.data.loading import TOFU_DIR_ENV, QARecord, QASetSpec, check_disjoint, load_qa, tofu_data_dir
from sau_compress.data.prompts import (
    PROMPT_FORMATS,
    PROMPT_TEMPLATE,
    PromptFormat,
    format_prompt,
    has_chat_template,
    pad_token_id,
    prompt_ids,
    resolve_prompt_format,
    tokenize_qa,
    tokenize_records,
)
from sau_compress.losses import IGNORE_INDEX

__all__ = [
    "IGNORE_INDEX",
    "PROMPT_FORMATS",
    "PROMPT_TEMPLATE",
    "PromptFormat",
    "QARecord",
    "QASetSpec",
    "TOFU_DIR_ENV",
    "check_disjoint",
    "collate",
    "format_prompt",
    "has_chat_template",
    "load_qa",
    "pad_token_id",
    "pair_forget_retain",
    "prompt_ids",
    "resolve_prompt_format",
    "sequential_batches",
    "spread_batches",
    "tofu_data_dir",
    "tokenize_qa",
    "tokenize_records",
]
