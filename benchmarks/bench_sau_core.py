"""Benchmark: SAU against the ``dense`` baseline and a plain PyTorch AdamW loop, on a 50%-pruned model.

All three runs use the same pruned weights, the same method (GradDiff), the same steps and the same
forget/retain batches (one plan from one seed):

- ``plain``: a textbook loop, ``torch.optim.AdamW`` on the target layers, no masking, ``loss.item()`` per step;
- ``dense``: ``unlearn(mode="dense")``: the same optimizer, then the frozen mask re-applied after each step;
- ``sau``: ``unlearn(mode="sau")``: saliency pass, G and W, compact update-scaled AdamW.

Reported: wall time of SAU including its saliency pass over dense's, SAU's peak memory over dense's, and
tokens/s of the SAU loop against the plain loop. Peak memory is ``UnlearnResult.peak_memory_bytes``: on CUDA
``torch.cuda.max_memory_allocated`` (everything: model, activations, gradients, optimizer state); on CPU the
model's bytes plus the measured rise of resident memory (``sau_compress.memory.PeakMemory``). For memory at
real model shapes, measured independently, see ``benchmarks/bench_scale.py``.

Usage::

    python benchmarks/bench_sau_core.py --model toy            # the toy memorizer (shipped in the package)
    python benchmarks/bench_sau_core.py --model tiny --epochs 2 # a small random Llama built here
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from loguru import logger

from sau_compress.data import collate, load_qa, pair_forget_retain, sequential_batches, tokenize_records
from sau_compress.losses import retain_nll, sequence_nll
from sau_compress.masking import prune_by_magnitude_, resolve_targets
from sau_compress.unlearn import UnlearnConfig, unlearn


def load_setup(kind: str) -> tuple[Any, Any, list[dict], list[dict]]:
    """Model, tokenizer, tokenized forget and retain items."""
    if kind == "toy":
        from transformers import AutoTokenizer, LlamaForCausalLM

        from sau_compress.worlds import build_toy_world

        world = build_toy_world()
        tokenizer = AutoTokenizer.from_pretrained(world.model_dir)
        model = LlamaForCausalLM.from_pretrained(world.model_dir)
        forget = load_qa(world.data_dir / "forget.jsonl")
        retain = load_qa(world.data_dir / "retain.jsonl")
    elif kind == "tiny":
        from transformers import LlamaConfig, LlamaForCausalLM

        from sau_compress.worlds import make_people, make_records, split_people, train_bpe_tokenizer

        people = make_people(40, seed=0)
        records = make_records(people, seed=0)
        split = split_people(people, seed=0)
        forget = [r for r in records if r["person"] in set(split["forget"])]
        retain = [r for r in records if r["person"] in set(split["retain"])]
        tokenizer = train_bpe_tokenizer([f"Question: {r['question']}\nAnswer: {r['answer']}" for r in records],
                                        vocab_size=1024)
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=256, intermediate_size=768, num_hidden_layers=4,
            num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=128, tie_word_embeddings=False,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ))
    else:
        raise ValueError(f"unknown --model '{kind}'; choose from ['toy', 'tiny']")
    return (model.eval(), tokenizer, tokenize_records(tokenizer, forget, max_length=64),
            tokenize_records(tokenizer, retain, max_length=64))


@torch.no_grad()
def mean_nll(model: Any, items: list[dict], pad: int, device: torch.device) -> float:
    """Token-mean answer NLL."""
    total, tokens = 0.0, 0.0
    for idx in sequential_batches(len(items), 64):
        b = collate([items[i] for i in idx], pad)
        logits = model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device)).logits
        nll, n = sequence_nll(logits, b["labels"].to(device))
        total += float(nll.sum())
        tokens += float(n.sum())
    return total / tokens


def plain_adamw_loop(model: Any, forget: list[dict], retain: list[dict], cfg: UnlearnConfig, pad: int,
                     device: torch.device) -> dict[str, float]:
    """The textbook GradDiff loop with torch.optim.AdamW on the target layers (no masks, no saliency)."""
    params = [layer.weight for layer in resolve_targets(model).values()]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    plan = pair_forget_retain(len(forget), len(retain), cfg.batch_size, torch.Generator().manual_seed(cfg.seed),
                              cfg.epochs, cfg.max_steps)
    use_autocast = device.type == "cuda" and cfg.autocast

    def loss_of(items: list[dict]) -> tuple[torch.Tensor, int]:
        b = collate(items, pad)
        n_tokens = int(b["attention_mask"].sum())
        b = {k: b[k].to(device, non_blocking=True) for k in ("input_ids", "attention_mask", "labels")}
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_autocast):
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
        return retain_nll(*sequence_nll(logits, b["labels"])), n_tokens

    model.train()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    tokens = 0
    for f_idx, r_idx in plan:
        f_loss, nf = loss_of([forget[i] for i in f_idx])
        r_loss, nr = loss_of([retain[j] for j in r_idx])
        (-cfg.effective_gamma() * f_loss + cfg.retain_weight * r_loss).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += nf + nr
        _ = f_loss.item(), r_loss.item()  # what a loop that logs its losses does
    _sync(device)
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values()
                   if torch.is_tensor(t)) + sum(p.numel() * p.element_size() for p in params)  # state + grads
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return {"seconds": seconds, "tokens": tokens, "tokens_per_second": tokens / seconds, "peak_memory_bytes": peak,
            "steps": len(plan)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="toy", choices=["toy", "tiny"])
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--method", default="grad_diff")
    parser.add_argument("--epochs", type=int, default=10, help="passes over the forget set (TOFU's default: 10)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    parser.add_argument("--repeats", type=int, default=3, help="measured repeats per run (the median is reported)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level="WARNING")

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, tokenizer, forget, retain = load_setup(args.model)
    pad = tokenizer.pad_token_id
    prune_by_magnitude_(model, args.sparsity)
    model.to(device)
    start_state = {k: v.clone() for k, v in model.state_dict().items()}
    # no clipping: the plain loop it is compared with has none
    cfg = {"method": args.method, "epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": args.lr,
           "device": str(device), "progress": False, "max_grad_norm": None}

    def fresh() -> None:
        model.load_state_dict(start_state)

    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "dense": [], "sau": []}
    quality: dict[str, dict[str, float]] = {}
    warm = UnlearnConfig(**dict(cfg, epochs=1, max_steps=3))
    for mode in ("dense", "sau"):  # warm-up: kernels, allocator, autotuning
        fresh()
        unlearn(model, forget, retain, warm.model_copy(update={"mode": mode}), pad_token_id=pad)
    fresh()
    plain_adamw_loop(model, forget, retain, warm, pad, device)
    for _ in range(args.repeats):
        for name in ("plain", "dense", "sau"):
            fresh()
            if name == "plain":
                runs[name].append(plain_adamw_loop(model, forget, retain, UnlearnConfig(**cfg), pad, device))
            else:
                res = unlearn(model, forget, retain, UnlearnConfig(**dict(cfg, mode=name)), pad_token_id=pad)
                runs[name].append({
                    "seconds": res.seconds, "train_seconds": res.train_seconds,
                    "saliency_seconds": res.saliency_seconds, "tokens": res.tokens,
                    "tokens_per_second": res.tokens_per_second,
                    "tokens_per_second_all_in": res.tokens / res.seconds,
                    "peak_memory_bytes": res.peak_memory_bytes, "optimizer_state_bytes": res.optimizer_state_bytes,
                    "steps": res.steps, "memory_measure": res.memory_measure,
                })
            quality[name] = {"forget_nll": mean_nll(model, forget, pad, device),
                             "retain_nll": mean_nll(model, retain, pad, device)}
    fresh()
    quality["start"] = {"forget_nll": mean_nll(model, forget, pad, device),
                        "retain_nll": mean_nll(model, retain, pad, device)}

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    out = {
        "model": args.model,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "settings": dict(cfg, sparsity=args.sparsity, steps=runs["sau"][0]["steps"], repeats=args.repeats),
        "median": {name: {k: med(name, k) for k in runs[name][0] if isinstance(runs[name][0][k], (int, float))}
                   for name in runs},
        "ratios": {
            "wall_time_sau_over_dense": med("sau", "seconds") / med("dense", "seconds"),
            "peak_memory_sau_over_dense": med("sau", "peak_memory_bytes") / med("dense", "peak_memory_bytes"),
            "optimizer_state_sau_over_dense": med("sau", "optimizer_state_bytes")
            / med("dense", "optimizer_state_bytes"),
            "tokens_per_second_sau_loop_over_plain": med("sau", "tokens_per_second")
            / med("plain", "tokens_per_second"),
            "tokens_per_second_sau_all_in_over_plain": med("sau", "tokens_per_second_all_in")
            / med("plain", "tokens_per_second"),
            "tokens_per_second_dense_loop_over_plain": med("dense", "tokens_per_second")
            / med("plain", "tokens_per_second"),
        },
        "quality_after": quality,
        "memory_measure": runs["sau"][0]["memory_measure"],
        "runs": runs,
    }
    print(f"model={out['model']} device={out['device']} steps={out['settings']['steps']} "
          f"repeats={args.repeats} memory={out['memory_measure']}")
    for name in ("plain", "dense", "sau"):
        m = out["median"][name]
        print(f"  {name:6s} wall {m['seconds']:.3f}s  tokens/s {m['tokens_per_second']:.0f}  "
              f"peak {m['peak_memory_bytes'] / 2**20:.2f} MiB  forget NLL {quality[name]['forget_nll']:.3f}  "
              f"retain NLL {quality[name]['retain_nll']:.3f}")
    for key, value in out["ratios"].items():
        print(f"  {key}: {value:.3f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
