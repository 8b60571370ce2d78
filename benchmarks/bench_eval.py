"""Evaluation speed on the toy memorizer (CPU by default): QA items per second.

Measures, on the first ``--items`` retain records of the toy world:

- ``generation_rouge``: greedy answers (``--max-new-tokens``) + ROUGE-L recall (the ``rouge`` metric);
- ``probability``: answer probability (one teacher-forced sequence per item);
- ``truth_ratio``: paraphrased + perturbed probabilities and the truth ratio (1 + 3 sequences per item);
- ``toy_suite``: the whole toy suite on ``--items`` records per set, retain-model reference included.

Run: ``python benchmarks/bench_eval.py [--items 64] [--batch-size 16] [--threads 2] [--device cpu]``.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=64, help="QA records per set")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats; the best is reported")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from loguru import logger
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sau_compress.data import load_qa
    from sau_compress.evaluation import EvalContext, evaluate, get_metric
    from sau_compress.worlds import build_toy_world

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    world = build_toy_world()
    tok = AutoTokenizer.from_pretrained(world.model_dir)
    model = AutoModelForCausalLM.from_pretrained(world.model_dir).to(args.device).eval()
    retain_model = AutoModelForCausalLM.from_pretrained(world.retain_model_dir).to(args.device).eval()
    sets = {name: load_qa(world.data_dir / f"{name}.jsonl", limit=args.items)
            for name in ("forget", "retain", "holdout")}
    n = len(sets["retain"])

    def best(fn) -> float:
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    def ctx() -> EvalContext:
        return EvalContext(model, tok, sets, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)

    def truth_ratio() -> None:
        c = ctx()
        para = get_metric("probability")(c, data="retain", answer_key="paraphrased_answer")
        pert = get_metric("probability")(c, data="retain", answer_key="perturbed_answer")
        get_metric("truth_ratio")(c, correct=para, wrong=pert, aggregator="true_better")

    seconds = {
        "generation_rouge": best(lambda: get_metric("rouge")(ctx(), data="retain")),
        "probability": best(lambda: get_metric("probability")(ctx(), data="retain")),
        "truth_ratio": best(truth_ratio),
        "toy_suite": best(lambda: evaluate(model, tok, "toy", datasets=sets, batch_size=args.batch_size,
                                           max_new_tokens=args.max_new_tokens, retain_model=retain_model)),
    }
    suite_items = sum(len(v) for v in sets.values())
    result = {
        "device": args.device,
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "model_parameters": sum(p.numel() for p in model.parameters()),
        "items": n,
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "items_per_second": {
            "generation_rouge": round(n / seconds["generation_rouge"], 1),
            "probability": round(n / seconds["probability"], 1),
            "truth_ratio": round(n / seconds["truth_ratio"], 1),
            "toy_suite": round(suite_items / seconds["toy_suite"], 1),
        },
    }
    sys.stdout.write(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
