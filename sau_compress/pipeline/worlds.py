"""Worlds on real pretrained models, their base named as any MODEL argument is
(:func:`sau_compress.models.resolve_model_path`): the worlds layer takes a folder and may not import the
models layer, so the name is resolved here."""

from __future__ import annotations

import os

from sau_compress.models import resolve_model_path
from sau_compress.pipeline.models import pick_device
from sau_compress.worlds import ToyWorld
from sau_compress.worlds.pretrained import DEFAULT_RETAIN_AUTHORS, FineTuneConfig, finetune_tofu_world
from sau_compress.worlds.tofu import check_retain_authors

__all__ = ["DEFAULT_BASE", "build_pretrained_tofu_world"]

#: the base model of the pretrained TOFU world when none is named
DEFAULT_BASE = "smollm2-135m-instruct"


def build_pretrained_tofu_world(
    base: str | os.PathLike[str] = DEFAULT_BASE,
    tofu_dir: str | os.PathLike[str] | None = None,
    retain_authors: int = DEFAULT_RETAIN_AUTHORS,
    seed: int = 0,
    out: str | os.PathLike[str] | None = None,
    force: bool = False,
    config: FineTuneConfig | None = None,
    device: str = "cpu",
) -> ToyWorld:
    """Build (or reuse) the TOFU world on a pretrained base: the base fine-tuned into a memorizer (forget +
    retain) and a retain model (retain only), cached under a key of every parameter and the base's weights
    (:func:`sau_compress.worlds.pretrained.finetune_tofu_world` has the details).

    :param base: a packaged model's name (fetched on first use), a model folder, a .gguf file or a hub id
    :param device: ``cpu``, ``cuda`` or ``cuda:N``
    :raises InputNotFoundError: the base, the TOFU folder or one of its files does not exist
    :raises UserError: ``retain_authors`` out of range, no TOFU folder given or set, an unusable device or base
    """
    check_retain_authors(retain_authors)
    target = pick_device(device)
    folder = resolve_model_path(base)
    return finetune_tofu_world(folder, base_name=str(base), tofu_dir=tofu_dir, retain_authors=retain_authors,
                               seed=seed, out=out, force=force, config=config, device=target)
