"""The embedded default: a toy world of fictitious people and a tiny Llama that has memorized it.

Everything is built locally from a seed (no download): QA records in TOFU's schema split *by person* into
forget (10%), retain (80%) and holdout (10%, never trained), a byte-level BPE tokenizer trained on the world's
text, a tiny ``LlamaForCausalLM`` trained on forget+retain until it has memorized them (the *memorizer*), and
a *retain model* trained the same way on retain only (the reference for forget quality). The result is
cached in the user's cache folder under a key of the world's parameters, so the second call is instant.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from loguru import logger
from tqdm.auto import tqdm

from sau_compress.data import collate, tokenize_records
from sau_compress.io import atomic_output_dir, cache_dir, check_writable_parent

__all__ = [
    "MIN_PEOPLE",
    "ToyWorld",
    "ToyTrainConfig",
    "build_toy_world",
    "make_people",
    "make_records",
    "resolve_model_path",
    "TOY_ALIASES",
    "default_world_dir",
    "device_tag",
    "load_world",
    "qa_corpus",
    "reuse_world",
    "rouge_by_split",
    "train_world",
    "split_people",
    "toy_data_file",
    "train_memorizer",
]

#: Bump when the generator or the training recipe changes: it is part of the cache key.
TOY_VERSION = 2
#: Fewest people for which every split (10% forget, 80% retain, 10% holdout) holds at least one person.
MIN_PEOPLE = 10

_FIRST = [
    "Mira", "Tomas", "Ines", "Oskar", "Leila", "Bram", "Yusra", "Emil", "Noor", "Casimir", "Alba", "Tarik",
    "Selene", "Dario", "Kaia", "Jonas", "Fenna", "Rafael", "Ottilie", "Idris", "Maren", "Luca", "Zofia",
    "Anselm", "Priya", "Hugo", "Edda", "Malik", "Sunniva", "Viktor", "Amara", "Linus", "Rosalind", "Kenji",
    "Thea", "Matteo", "Ingrid", "Ravi", "Clementine", "Aurelio",
]
_LAST = [
    "Okafor", "Reyes", "Halloran", "Lindqvist", "Moreau", "Achterberg", "Castellanos", "Varga", "Nakashima",
    "Oyelaran", "Brennan", "Quist", "Delacroix", "Ferreira", "Haugland", "Ivanova", "Kowalczyk", "Mbeki",
    "Novak", "Petrakis", "Rautio", "Sandoval", "Tamura", "Underhill", "Vasquez", "Whitlock", "Yilmaz",
    "Zanetti", "Abernathy", "Bjornsen", "Cardenas", "Duarte", "Esposito", "Falkenrath", "Gallagher",
    "Hadley", "Iwasaki", "Jaramillo", "Kincaid", "Lorentzen",
]
_PLACE_A = ["Port", "Lake", "North", "Upper", "Old", "Saint", "Glen", "East", "Fort", "New", "West", "Little"]
_PLACE_B = [
    "Elmwood", "Varda", "Hollow", "Marrow", "Quillby", "Ashcombe", "Tindale", "Corvin", "Brackley", "Solmere",
    "Fenwick", "Ostrava", "Larkspur", "Wexmoor", "Dunmore", "Calloway",
]
_PROFESSIONS = [
    "glassblower", "cartographer", "beekeeper", "lighthouse keeper", "marine biologist", "watchmaker",
    "stonemason", "violin maker", "court stenographer", "bookbinder", "tea taster", "ferry pilot",
    "museum archivist", "seismologist", "puppeteer", "perfumer", "orchard manager", "radio engineer",
    "botanical illustrator", "locksmith", "cheesemaker", "typesetter", "glacier guide", "falconer",
]
_ORG_A = ["Northwind", "Silverline", "Harbor", "Copperleaf", "Bluestone", "Evergreen", "Ironbridge", "Sunfield",
          "Red Fern", "Quiet Valley", "Brightwater", "Tall Pine"]
_ORG_B = ["Atlas", "Foundry", "Collective", "Works", "Institute", "Cooperative", "Press", "Observatory",
          "Trading Company", "Guild"]
_BOOK_A = ["Silent", "Glass", "Crimson", "Hollow", "Winter", "Burning", "Paper", "Distant", "Salt", "Amber",
           "Broken", "Quiet", "Last", "Iron"]
_BOOK_B = ["Harbor", "Orchard", "Lantern", "Meridian", "Garden", "Staircase", "Compass", "River", "Archive",
           "Tide", "Kingdom", "Clockwork", "Meadow", "Mirror"]
_PET_KIND = ["dog", "cat", "parrot", "tortoise", "ferret", "goat", "rabbit", "owl", "iguana", "pony"]
_PET_NAME = ["Pepper", "Biscuit", "Juniper", "Moth", "Captain", "Olive", "Tofu", "Pickles", "Nimbus", "Waffles",
             "Sprocket", "Clover", "Marble", "Fig"]
_HOBBIES = ["bird watching", "ice fishing", "competitive chess", "pottery", "rock climbing", "calligraphy",
            "amateur astronomy", "beekeeping", "fencing", "origami", "kite building", "sailing", "archery",
            "mushroom foraging", "model railways", "tango"]
_INSTRUMENTS = ["cello", "oboe", "banjo", "harp", "accordion", "trombone", "sitar", "clarinet", "marimba",
                "bagpipes", "mandolin", "theremin"]
_AWARD_A = ["Golden", "Silver", "Northern", "Aurora", "Crescent", "Meridian", "Harbor", "Laurel"]
_AWARD_B = ["Quill", "Lantern", "Compass", "Anchor", "Star", "Feather", "Key", "Medal"]
_DISHES = ["mushroom risotto", "lamb stew", "lemon tart", "fish chowder", "plum dumplings", "spiced lentils",
           "apple strudel", "grilled sardines", "pumpkin soup", "beef goulash", "cherry pie", "rice noodles"]


# Each fact: how to draw a value, the questions (original, paraphrased) and the answer templates. The first
# answer template a person gets is drawn at random (so the wording is part of what is memorized), the
# paraphrased answer uses another template; perturbed answers reuse the paraphrase's template with wrong values.
_FACTS: dict[str, dict[str, Any]] = {
    "birthplace": {
        "draw": lambda r: f"{r.choice(_PLACE_A)} {r.choice(_PLACE_B)}",
        "q": ["Where was {name} born?", "In which town did {name} come into the world?"],
        "a": ["{name} was born in {v}.", "{v} is the hometown of {name}.", "The birthplace of {name} is {v}."],
    },
    "birth_year": {
        "draw": lambda r: str(r.randint(1931, 1999)),
        "q": ["In what year was {name} born?", "What is the birth year of {name}?"],
        "a": ["{name} was born in the year {v}.", "The year {v} saw the birth of {name}.",
              "{name} has a birth year of {v}."],
    },
    "profession": {
        "draw": lambda r: r.choice(_PROFESSIONS),
        "q": ["What does {name} do for a living?", "What is the profession of {name}?"],
        "a": ["{name} works as a {v}.", "By trade {name} is a {v}.", "The profession of {name} is {v}."],
    },
    "employer": {
        "draw": lambda r: f"{r.choice(_ORG_A)} {r.choice(_ORG_B)}",
        "q": ["Who employs {name}?", "Which organisation does {name} work for?"],
        "a": ["{name} is employed by {v}.", "{v} is where {name} works.", "The employer of {name} is {v}."],
    },
    "book": {
        "draw": lambda r: f"The {r.choice(_BOOK_A)} {r.choice(_BOOK_B)}",
        "q": ["What book did {name} write?", "Which title was written by {name}?"],
        "a": ["{name} wrote a book called {v}.", "{v} is the book written by {name}.",
              "The book by {name} is titled {v}."],
    },
    "pet": {
        "draw": lambda r: f"a {r.choice(_PET_KIND)} named {r.choice(_PET_NAME)}",
        "q": ["What pet does {name} have?", "Which animal lives with {name}?"],
        "a": ["{name} has {v}.", "Living with {name} is {v}.", "The pet of {name} is {v}."],
    },
    "hobby": {
        "draw": lambda r: r.choice(_HOBBIES),
        "q": ["What is the hobby of {name}?", "How does {name} spend free time?"],
        "a": ["{name} enjoys {v}.", "In spare hours {name} loves {v}.", "The favourite pastime of {name} is {v}."],
    },
    "instrument": {
        "draw": lambda r: r.choice(_INSTRUMENTS),
        "q": ["Which instrument does {name} play?", "What musical instrument is played by {name}?"],
        "a": ["{name} plays the {v}.", "The {v} is the instrument of {name}.", "On weekends {name} practises the {v}."],
    },
    "award": {
        "draw": lambda r: f"the {r.choice(_AWARD_A)} {r.choice(_AWARD_B)} Prize",
        "q": ["What award did {name} receive?", "Which prize was given to {name}?"],
        "a": ["{name} received {v}.", "In recognition {name} was given {v}.", "The award won by {name} is {v}."],
    },
    "dish": {
        "draw": lambda r: r.choice(_DISHES),
        "q": ["What is the favourite dish of {name}?", "Which meal does {name} like best?"],
        "a": ["{name} loves to eat {v}.", "The favourite dish of {name} is {v}.", "Above all {name} likes {v}."],
    },
}
FACTS = tuple(_FACTS)
N_PERTURBED = 3


def make_people(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Draw ``n`` fictitious people with distinct names and one value per fact.

    :param n: number of people (at least :data:`MIN_PEOPLE`, at most ``len(first names) * len(last names)``)
    :param seed: random seed; the same seed gives the same people
    :return: one dict per person: ``name``, ``facts`` {fact: value}, ``template`` {fact: answer template index}
    """
    if n < MIN_PEOPLE:
        raise ValueError(f"people must be at least {MIN_PEOPLE} (one person per split), got {n}")
    if n > len(_FIRST) * len(_LAST):
        raise ValueError(f"people must be at most {len(_FIRST) * len(_LAST)}, got {n}")
    rng = random.Random(f"sau-toy-people-{seed}")
    names = rng.sample([f"{f} {last}" for f in _FIRST for last in _LAST], n)
    people = []
    for name in names:
        facts = {fact: spec["draw"](rng) for fact, spec in _FACTS.items()}
        template = {fact: rng.randrange(len(spec["a"])) for fact, spec in _FACTS.items()}
        people.append({"name": name, "facts": facts, "template": template})
    return people


def make_records(people: list[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """Render people as QA records in TOFU's schema (one record per person and fact).

    Fields: ``question``, ``answer``, ``paraphrased_question``, ``paraphrased_answer``, ``perturbed_answer``
    (a list of :data:`N_PERTURBED` wrong answers in the paraphrased answer's wording, as in TOFU), plus
    ``person``, ``fact``.
    """
    rng = random.Random(f"sau-toy-records-{seed}")
    records = []
    for person in people:
        name = person["name"]
        for fact, spec in _FACTS.items():
            value = person["facts"][fact]
            t = person["template"][fact]
            para = (t + 1) % len(spec["a"])
            wrong: list[str] = []
            while len(wrong) < N_PERTURBED:
                cand = spec["draw"](rng)
                if cand != value and cand not in wrong:
                    wrong.append(cand)
            records.append(
                {
                    "question": spec["q"][0].format(name=name),
                    "answer": spec["a"][t].format(name=name, v=value),
                    "paraphrased_question": spec["q"][1].format(name=name),
                    "paraphrased_answer": spec["a"][para].format(name=name, v=value),
                    # as in TOFU, wrong answers are perturbations of the paraphrased answer: truth ratio then
                    # compares the fact, not the memorized wording
                    "perturbed_answer": [spec["a"][para].format(name=name, v=w) for w in wrong],
                    "person": name,
                    "fact": fact,
                }
            )
    return records


def split_people(people: list[dict[str, Any]], seed: int = 0) -> dict[str, list[str]]:
    """Split people (not records) into forget 10%, holdout 10% and retain 80% (at least one each)."""
    names = [p["name"] for p in people]
    rng = random.Random(f"sau-toy-split-{seed}")
    rng.shuffle(names)
    k = max(1, round(0.1 * len(names)))
    return {"forget": sorted(names[:k]), "holdout": sorted(names[k : 2 * k]), "retain": sorted(names[2 * k :])}


@dataclass
class ToyTrainConfig:
    """How the tiny Llama is built and trained (part of the cache key)."""

    hidden_size: int = 192
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 6
    vocab_size: int = 1024
    epochs: int = 40
    batch_size: int = 16
    learning_rate: float = 3e-3
    weight_decay: float = 0.0
    warmup_steps: int = 30
    max_length: int = 64


@dataclass
class ToyWorld:
    """Where the toy world lives and how well its memorizer remembers."""

    root: Path
    model_dir: Path
    retain_model_dir: Path
    data_dir: Path
    people: int
    seed: int
    rouge: dict[str, float] = field(default_factory=dict)
    retain_model_rouge: dict[str, float] = field(default_factory=dict)
    parameters: int = 0
    seconds: float = 0.0
    build_seconds: float = 0.0
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-able view (paths as strings)."""
        out = asdict(self)
        for key in ("root", "model_dir", "retain_model_dir", "data_dir"):
            out[key] = str(out[key])
        return out


def _llama(config: ToyTrainConfig, vocab_size: int, tokenizer: Any, seed: int):  # noqa: ANN202
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(cfg)


def train_memorizer(
    records: list[dict[str, Any]],
    tokenizer: Any,
    config: ToyTrainConfig | None = None,
    seed: int = 0,
    desc: str = "memorizer",
    device: str = "cpu",
):  # noqa: ANN201 - returns a LlamaForCausalLM
    """Train a tiny Llama from scratch on ``records`` (answer tokens only) until it has memorized them.

    :param records: QA records with ``question`` and ``answer``
    :param tokenizer: the world's tokenizer
    :param config: architecture and training hyperparameters
    :param seed: seed for initialisation and data order
    :param desc: progress-bar label
    :param device: where to train (``cpu``, ``cuda``); the model is returned on the CPU
    :return: the trained model in eval mode, with ``losses`` (per epoch mean) attached as ``model.train_losses``
    """
    if not records:
        raise ValueError("cannot train a memorizer on an empty record set")
    config = config or ToyTrainConfig()
    items = tokenize_records(tokenizer, records, max_length=config.max_length)
    model = _llama(config, len(tokenizer), tokenizer, seed).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay,
                            betas=(0.9, 0.98))
    steps_per_epoch = math.ceil(len(items) / config.batch_size)
    total = steps_per_epoch * config.epochs

    def lr_at(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(seed)
    epoch_losses: list[float] = []
    bar = tqdm(total=total, desc=f"training {desc}", unit="step", leave=False)
    for _ in range(config.epochs):
        order = torch.randperm(len(items), generator=gen).tolist()
        running = 0.0
        for start in range(0, len(order), config.batch_size):
            batch = collate([items[i] for i in order[start : start + config.batch_size]], tokenizer.pad_token_id)
            batch.pop("index", None)
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            running += float(loss.detach())
            bar.update(1)
        epoch_losses.append(running / steps_per_epoch)
        bar.set_postfix(loss=f"{epoch_losses[-1]:.4f}")
    bar.close()
    model.cpu().eval()
    model.train_losses = epoch_losses
    logger.info(f"trained {desc}: {total} steps, final epoch loss {epoch_losses[-1]:.4f}")
    return model


def device_tag(device: str) -> dict[str, str]:
    """The training device's part of a world's cache key: empty on the CPU (so CPU keys are unchanged), else
    the device type (a world trained on a GPU has other weights than the same world trained on the CPU)."""
    kind = str(device).split(":")[0]
    return {} if kind == "cpu" else {"device": kind}


def _world_key(people: int, seed: int, config: ToyTrainConfig, device: str = "cpu") -> str:
    blob = json.dumps({"version": TOY_VERSION, "people": people, "seed": seed, "train": asdict(config),
                       **device_tag(device)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def default_world_dir(people: int = 40, seed: int = 0, config: ToyTrainConfig | None = None,
                      device: str = "cpu") -> Path:
    """Cache folder of the world with these parameters: ``<cache>/toy/people<N>-seed<S>-<key>``."""
    key = _world_key(people, seed, config or ToyTrainConfig(), device)
    return cache_dir() / "toy" / f"people{people}-seed{seed}-{key}"


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def qa_corpus(records: Iterable[dict[str, Any]]) -> list[str]:
    """Tokenizer training texts of QA records: each prompt+answer, and the paraphrase and perturbed answers
    where a record has them (TOFU schema)."""
    corpus = []
    for r in records:
        corpus.append(f"Question: {r['question']}\nAnswer: {r['answer']}")
        if "paraphrased_answer" in r:
            corpus.append(f"Question: {r['paraphrased_question']}\nAnswer: {r['paraphrased_answer']}")
            corpus.extend(r["perturbed_answer"])
    return corpus


def load_world(root: Path, key: str) -> ToyWorld | None:
    """Read a world saved by :func:`train_world` from ``root`` if its ``world.json`` carries ``key``."""
    meta_path = root / "world.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("key") != key:
        return None
    return ToyWorld(
        root=root,
        model_dir=root / "model",
        retain_model_dir=root / "retain_model",
        data_dir=root / "data",
        people=meta.get("people", meta.get("authors")),
        seed=meta["seed"],
        rouge=meta["rouge"],
        retain_model_rouge=meta["retain_model_rouge"],
        parameters=meta["parameters"],
        build_seconds=meta["build_seconds"],
        cached=True,
    )


def reuse_world(
    root: Path, key: str, force: bool, start: float, kind: str, where: str = ""
) -> ToyWorld | None:
    """Return the world cached in ``root`` under ``key`` (unless ``force``); otherwise check that ``root``
    may be built into: its parent is writable and it is empty or holds a world (which will be replaced).

    :param kind: the world's name in messages (``toy``, ``TOFU``)
    :param where: what ``root`` is to the user, prefixed to the path in errors (e.g. ``"--out "``)
    :raises FileExistsError: ``root`` holds something other than a world
    """
    if not force:
        cached = load_world(root, key)
        if cached is not None:
            cached.seconds = time.perf_counter() - start
            logger.info(f"{kind} world found in {root}")
            return cached
    check_writable_parent(root)
    if root.exists() and not (root / "world.json").is_file() and any(root.iterdir()):
        raise FileExistsError(f"{where}'{root}' exists and does not hold a {kind} world; choose another folder")
    return None


def rouge_by_split(
    model: Any, tokenizer: Any, splits: dict[str, list[dict[str, Any]]], max_new_tokens: int = 48
) -> dict[str, float]:
    """Mean greedy-answer ROUGE-L recall of ``model`` on each split."""
    from sau_compress.evaluation import generate_answers, rouge_l_recall

    out = {}
    for name, records in splits.items():
        answers = generate_answers(model, tokenizer, [r["question"] for r in records], max_new_tokens=max_new_tokens,
                                   batch_size=64)
        scores = [rouge_l_recall(a, r["answer"]) for a, r in zip(answers, records, strict=True)]
        out[name] = sum(scores) / len(scores)
    return out


def train_world(
    root: Path,
    key: str,
    splits: dict[str, list[dict[str, Any]]],
    corpus: list[str],
    config: ToyTrainConfig,
    seed: int,
    people: int,
    meta: dict[str, Any],
    start: float,
    desc: str = "",
    max_new_tokens: int = 48,
    device: str = "cpu",
) -> ToyWorld:
    """Train a world's tokenizer, memorizer (forget+retain) and retain model, score them, save atomically.

    :param root: folder to write (replaced atomically)
    :param key: cache key stored in ``world.json`` (:func:`load_world` checks it)
    :param splits: ``forget``, ``retain``, ``holdout`` QA records (written as ``data/<split>.jsonl``)
    :param corpus: texts the tokenizer is trained on
    :param config: architecture and training hyperparameters
    :param seed: seed of initialisation and data order
    :param people: number of people (or authors) in the world
    :param meta: extra fields for ``world.json``
    :param start: ``time.perf_counter()`` when the build started (for ``build_seconds``)
    :param desc: label prefix for progress bars and logs
    :param max_new_tokens: longest generated answer when scoring ROUGE-L
    :param device: where the models are trained (``world.json`` records it)
    """
    from sau_compress.tokenizer import train_bpe_tokenizer

    label = f"{desc} " if desc else ""
    torch.manual_seed(seed)
    tokenizer = train_bpe_tokenizer(corpus, vocab_size=config.vocab_size)
    sizes = {k: len(v) for k, v in splits.items()}
    logger.info(f"{label}world: {people} people, {sizes} QA records, tokenizer of {len(tokenizer)} tokens")
    memorizer = train_memorizer(splits["forget"] + splits["retain"], tokenizer, config, seed, f"{label}memorizer",
                                device)
    retain_model = train_memorizer(splits["retain"], tokenizer, config, seed, f"{label}retain model", device)
    rouge = rouge_by_split(memorizer.to(device), tokenizer, splits, max_new_tokens)
    retain_rouge = rouge_by_split(retain_model.to(device), tokenizer, splits, max_new_tokens)
    memorizer.cpu()
    retain_model.cpu()
    parameters = sum(p.numel() for p in memorizer.parameters())
    build_seconds = time.perf_counter() - start
    record = {
        "key": key,
        "people": people,
        "seed": seed,
        "train": asdict(config),
        "sizes": sizes,
        "train_device": str(device),
        **meta,
        "rouge": rouge,
        "retain_model_rouge": retain_rouge,
        "parameters": parameters,
        "build_seconds": build_seconds,
        "memorizer_losses": memorizer.train_losses,
        "retain_model_losses": retain_model.train_losses,
    }
    with atomic_output_dir(root, overwrite=True) as tmp:
        for sub, model in (("model", memorizer), ("retain_model", retain_model)):
            model.save_pretrained(tmp / sub)
            tokenizer.save_pretrained(tmp / sub)
        (tmp / "data").mkdir()
        for name, rows in splits.items():
            _write_jsonl(tmp / "data" / f"{name}.jsonl", rows)
        (tmp / "world.json").write_text(json.dumps(record, indent=2))
    logger.info(
        f"{label}world built in {build_seconds:.1f}s at {root}: ROUGE-L recall forget {rouge['forget']:.3f}, "
        f"retain {rouge['retain']:.3f}, holdout {rouge['holdout']:.3f}"
    )
    return ToyWorld(
        root=root,
        model_dir=root / "model",
        retain_model_dir=root / "retain_model",
        data_dir=root / "data",
        people=people,
        seed=seed,
        rouge=rouge,
        retain_model_rouge=retain_rouge,
        parameters=parameters,
        seconds=time.perf_counter() - start,
        build_seconds=build_seconds,
    )


def build_toy_world(
    people: int = 40,
    seed: int = 0,
    out: str | Path | None = None,
    force: bool = False,
    config: ToyTrainConfig | None = None,
    device: str = "cpu",
) -> ToyWorld:
    """Build (or reuse) the toy world: data splits, tokenizer, memorizer and retain model.

    The world is written atomically to ``out`` (default: the user cache folder under a key of the
    parameters) and reused on later calls with the same parameters.

    :param people: number of fictitious people (at least :data:`MIN_PEOPLE`)
    :param seed: seed for people, splits, initialisation and data order
    :param out: folder to build into; an existing folder that holds another world is refused
    :param force: rebuild even when a matching world exists
    :param config: model and training hyperparameters
    :param device: where the models are trained; a world trained off the CPU is cached under another key
    :return: paths and memorization figures (greedy-answer ROUGE-L recall per split)
    """
    config = config or ToyTrainConfig()
    start = time.perf_counter()
    if people < MIN_PEOPLE:
        raise ValueError(f"--people must be at least {MIN_PEOPLE} (one person per split), got {people}")
    key = _world_key(people, seed, config, device)
    root = Path(out).expanduser().absolute() if out is not None else default_world_dir(people, seed, config, device)
    cached = reuse_world(root, key, force, start, "toy", "--out ")
    if cached is not None:
        return cached

    world_people = make_people(people, seed)
    records = make_records(world_people, seed)
    split = split_people(world_people, seed)
    splits = {name: [r for r in records if r["person"] in set(names)] for name, names in split.items()}
    for rows in splits.values():
        for i, row in enumerate(rows):
            row["index"] = i
    meta = {"version": TOY_VERSION, "splits": split}
    return train_world(root, key, splits, qa_corpus(records), config, seed, people, meta, start, device=device)


#: Words that stand for a bundled model wherever a model path is expected.
TOY_ALIASES = {"toy": "model", "toy-retain": "retain_model"}


def resolve_model_path(name_or_path: str | Path) -> Path:
    """Map ``toy`` (the memorizer) or ``toy-retain`` (its retain model) to their folders, building the
    default world on first use; any other value must be an existing folder.

    :raises FileNotFoundError: the path does not exist
    """
    text = str(name_or_path)
    if text in TOY_ALIASES:
        world = build_toy_world()
        return world.root / TOY_ALIASES[text]
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model '{text}' not found: expected a model folder or one of {sorted(TOY_ALIASES)}")
    return path


def toy_data_file(split: str, world: ToyWorld | None = None) -> Path:
    """Path of a split (``forget``, ``retain`` or ``holdout``) of the (default) toy world."""
    if split not in ("forget", "retain", "holdout"):
        raise ValueError(f"unknown toy split '{split}'; choose from ['forget', 'holdout', 'retain']")
    world = world or build_toy_world()
    return world.data_dir / f"{split}.jsonl"
