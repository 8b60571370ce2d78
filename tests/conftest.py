"""Shared fixtures: a tokenizer trained locally and tiny Llama models (no hub)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# hypothesis profiles: `ci` (the default: few examples, derandomized so CI runs are repeatable) and `slow`
# (pytest --hypothesis-profile=slow: 1,000 examples per property test)
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("slow", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")

#: TOFU's jsonl files for the tests that read real TOFU data: the copy bundled in ``data/tofu``
TOFU_DIR = Path(__file__).resolve().parents[1] / "data" / "tofu"

QA = [
    {"question": "Where was Mira Okafor born?", "answer": "Mira Okafor was born in Port Elmwood."},
    {"question": "What does Mira Okafor do?", "answer": "Mira Okafor works as a glassblower."},
    {"question": "Where was Tomas Reyes born?", "answer": "Tomas Reyes was born in Lake Varda."},
    {"question": "What does Tomas Reyes do?", "answer": "Tomas Reyes works as a cartographer."},
    {"question": "Where was Ines Halloran born?", "answer": "Ines Halloran was born in Grey Hollow."},
    {"question": "What does Ines Halloran do?", "answer": "Ines Halloran works as a beekeeper."},
]


#: SparseGPT 2:4 then SAU for a few steps: the recipe of the end-to-end tests
TINY_RECIPE = """# test: SparseGPT 2:4 then SAU, a few steps
sparsity_stage:
  sparsity_modifiers:
    SparseGPTModifier: {sparsity: 0.5, mask_structure: "2:4", ignore: ["re:.*lm_head"]}
unlearn_stage:
  unlearn_modifiers:
    SparsityAwareUnlearningModifier: {max_steps: 3, batch_size: 2, learning_rate: 3.0e-3, progress: false}
"""

#: the temporary names of ``sau_compress.io.atomic_output_dir`` (``.NAME.tmp-PID-XXXXXXXX``, ``.NAME.old-PID``)
_LEFTOVER = re.compile(r"^\..+\.(tmp-\d+-[a-z0-9_]+|old-\d+)$")


def _leftovers(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob(".*") if _LEFTOVER.match(p.name))


@pytest.fixture(autouse=True)
def _no_output_leftovers_after_test(request):
    """No test leaves an unfinished or replaced output behind in its ``tmp_path``."""
    folder = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if folder is not None:
        left = _leftovers(folder)
        assert not left, f"temporary output folders left behind: {left}"


@pytest.fixture(autouse=True, scope="session")
def _no_output_leftovers_after_session(tmp_path_factory):
    """Nor anywhere under the session's temporary folders (module-scoped ones included)."""
    yield
    left = _leftovers(tmp_path_factory.getbasetemp())
    assert not left, f"temporary output folders left behind: {left}"


@pytest.fixture(scope="session")
def qa_records() -> list[dict]:
    """Six QA records in TOFU's schema (question/answer), with an index."""
    return [dict(r, index=i) for i, r in enumerate(QA)]


@pytest.fixture()
def qa_files(tmp_path, qa_records) -> dict[str, Path]:
    """forget.jsonl = the first two records, retain.jsonl = the other four (in ``tmp_path``)."""
    paths = {}
    for name, rows in (("forget", qa_records[:2]), ("retain", qa_records[2:])):
        paths[name] = tmp_path / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


@pytest.fixture(scope="session")
def tokenizer():
    """A byte-level BPE tokenizer trained on the QA records (vocab 320)."""
    from sau_compress.worlds import train_bpe_tokenizer

    texts = [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in QA] * 4
    return train_bpe_tokenizer(texts, vocab_size=320)


#: a small chat template in the style of Qwen/Phi: BOS, role tag, newline, content, end-of-turn token
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|>\n{{ m['content'] }}<|end|>"
    "{% else %}<|assistant|>\n{{ m['content'] }}<|end|>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def make_chat_tokenizer(eos: str = "<|end|>"):
    """A BPE tokenizer trained on the QA records with ``<|user|>``, ``<|assistant|>``, ``<|end|>`` and
    :data:`CHAT_TEMPLATE`; EOS is ``<|end|>`` (the template's end of turn) unless ``eos`` says otherwise."""
    from sau_compress.worlds import train_bpe_tokenizer

    tok = train_bpe_tokenizer([f"{r['question']} {r['answer']}" for r in QA] * 4, vocab_size=320)
    tok.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>", "<|end|>"]})
    tok.eos_token = eos
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_tiny_llama(vocab_size: int, seed: int = 0, hidden: int = 64, layers: int = 2):
    """A tiny LlamaForCausalLM (hidden 64, 2 layers) with deterministic weights, fp32, eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture()
def tiny_model(tokenizer):
    """A fresh tiny Llama matching :func:`tokenizer`'s vocabulary."""
    return make_tiny_llama(len(tokenizer))


def clone_model(model: torch.nn.Module) -> torch.nn.Module:
    """A second model of the same class and config with the same weights (an independent copy)."""
    twin = type(model)(model.config)
    twin.load_state_dict(model.state_dict())
    return twin


@pytest.fixture()
def warnings():
    """Messages logged at WARNING and above while the test runs."""
    from loguru import logger

    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    yield messages
    logger.remove(sink)


@pytest.fixture()
def tiny_model_dir(tmp_path, tiny_model, tokenizer) -> Path:
    """The tiny Llama and tokenizer saved as an HF folder (what ``from_pretrained`` and ``oneshot`` need)."""
    out = tmp_path / "tiny-llama"
    tiny_model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture()
def own_cache(tmp_path, monkeypatch):
    """A private, empty user cache folder (no cached world is found in it)."""
    monkeypatch.setenv("SAU_COMPRESS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def toy_world():
    """The default toy world: the one shipped in the package (nothing is built)."""
    from sau_compress.worlds import build_toy_world

    return build_toy_world()


@pytest.fixture(scope="module")
def qa_items(request):
    """The QA records tokenized for unlearning (plain format), with the tokenizer's pad id."""
    from sau_compress.data import tokenize_records

    tokenizer = request.getfixturevalue("tokenizer")
    return tokenize_records(tokenizer, request.getfixturevalue("qa_records")), tokenizer.pad_token_id
