"""Forgetting that lasts: attack an unlearned model (quantization, further pruning, paraphrased questions,
relearning, membership inference) and check that what it forgot stays forgotten.

- :func:`audit` runs the attacks and gives each a verdict (:class:`AuditSettings` holds the thresholds);
- :mod:`~sau_compress.audit.attacks`: the variants (each on a copy: the audited model is never changed);
- :mod:`~sau_compress.audit.quant`: round-to-nearest fake quantization with compressed-tensors' definitions;
- :func:`write_audit`, :func:`audit_summary`: ``audit.json`` + ``audit.md`` + ``audit.png``, the sidecar summary.

See ``docs/audit.md``.
"""

from __future__ import annotations

from sau_compress.audit.attacks import (
    finetuned_copy,
    paraphrase_variants,
    prune_more_copy,
    prune_more_target,
    quantized_copy,
    split_by_person,
)
from sau_compress.audit.core import ATTACK_SCORES, ATTACKS, AuditSettings, Subject, audit, measure, parse_attacks
from sau_compress.audit.quant import QUANT_SCHEMES, QuantScheme, fake_quantize_tokens, fake_quantize_weight
from sau_compress.audit.report import AUDIT_FILE, audit_summary, render_audit, write_audit

__all__ = [
    "ATTACKS",
    "ATTACK_SCORES",
    "AUDIT_FILE",
    "QUANT_SCHEMES",
    "AuditSettings",
    "QuantScheme",
    "Subject",
    "audit",
    "audit_summary",
    "fake_quantize_tokens",
    "fake_quantize_weight",
    "finetuned_copy",
    "measure",
    "paraphrase_variants",
    "parse_attacks",
    "prune_more_copy",
    "prune_more_target",
    "quantized_copy",
    "render_audit",
    "split_by_person",
    "write_audit",
]
