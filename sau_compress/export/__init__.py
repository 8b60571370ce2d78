"""Export: compressed-tensors ``sparse-24-bitmask`` writer and reader, dense export for current vLLM, inspect.

``sparse-24-bitmask`` halves the weight bytes of 2:4 layers and is read by compressed-tensors <= 0.14.0.1 and
served with sparse kernels by vLLM <= 0.18.1; ``dense`` loads in current vLLM. Both carry the sidecar
``sau_compress.json``. See ``docs/export.md``.

Modules, one job each: :mod:`~sau_compress.export.config` (``config.json``, format names),
:mod:`~sau_compress.export.state` (state dicts), :mod:`~sau_compress.export.convert` (state dict -> a format's
tensors and config), :mod:`~sau_compress.export.write` and :mod:`~sau_compress.export.read` (checkpoints),
:mod:`~sau_compress.export.bitmask` (the packing math), :mod:`~sau_compress.export.files` (safetensors and
JSON files), :mod:`~sau_compress.export.metadata` (the sidecar), :mod:`~sau_compress.export.inspect`.
"""

from __future__ import annotations

from sau_compress.errors import CorruptCheckpointError
from sau_compress.export.bitmask import bits_equal, pack_24_bitmask, unpack_24_bitmask
from sau_compress.export.config import CT_FORMAT_VERSION, FORMATS, check_format, read_config
from sau_compress.export.convert import is_two_four
from sau_compress.export.files import read_header, tensor_index
from sau_compress.export.inspect import inspect_checkpoint
from sau_compress.export.metadata import SIDECAR_NAME, forget_set_hash, unlearning_record, vllm_support
from sau_compress.export.read import load_model, read_state_dict
from sau_compress.export.write import export_checkpoint, export_model, save_model
from sau_compress.masking import count_2of4_violations

# the one 2:4 check is masking's; export's name for its count stays for existing callers
count_group_violations = count_2of4_violations

__all__ = [
    "CT_FORMAT_VERSION",
    "FORMATS",
    "SIDECAR_NAME",
    "CorruptCheckpointError",
    "bits_equal",
    "check_format",
    "count_group_violations",
    "export_checkpoint",
    "export_model",
    "forget_set_hash",
    "inspect_checkpoint",
    "is_two_four",
    "load_model",
    "pack_24_bitmask",
    "read_config",
    "read_header",
    "read_state_dict",
    "save_model",
    "tensor_index",
    "unlearning_record",
    "unpack_24_bitmask",
    "vllm_support",
]
