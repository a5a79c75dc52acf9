"""Figure — retrieval quality: untrained network vs trained network vs trained + verification.

One run, the same queries for every row. Index: the 44 Heidelberg references (every file, so the
papyri with two HGV ids are in it twice), embedded in memory (``evaluation.MemoryIndex``: exact
cosine kNN, the same ``verify`` module as the search chain). Queries: software re-photographs of
each distinct reference (``evaluation.make_queries``, ``training.recapture``: perspective, crop,
rotation, lighting, colour cast, glare, moiré, occlusion, blur, JPEG), ground truth by inventory.

Rows:

- **untrained**: a seeded random ``SiameseResNet18`` (seed 1234, as the tests' model);
- **trained (batch-hard)**: the same network with its head trained by ``train_triplets``
  (``trainable="head"``, ``cache_views``: a pool of re-photographs per papyrus through the
  frozen trunk once, then triplet steps on the cached features; seed 0, bounded time). There are
  no pretrained weights offline, so the trunk stays the seeded random one: what the row measures
  is what training adds to the same network;
- **trained (random negatives)**: the same training with random negatives, as the original
  papyrusNet mined them;
- **+ verification**: the batch-hard model's top 10 re-ranked by SIFT + RANSAC homography inliers
  (``verify``), and the untrained model's too (verification alone).

The training uses a pool of re-photographs made with its own seed; the queries use another seed,
so no query image is ever a training view (the papyri are the same: this is instance retrieval,
the index holds exactly the papyri the model was trained on, as a curator's index does).

Run alone: ``python benchmarks/bench_retrieval.py [--quick]``.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

NAME = "retrieval"
K = 10
QUERY_SEED = 2024
TRAIN_SEED = 0
INIT_SEED = 1234


def train(
    untrained: Any, identities: Any, *, mining: str, views: int, epochs: int, steps: int, limit_s: float
) -> Any:
    from papyrus_widgets.training import train_triplets

    model = copy.deepcopy(untrained)
    return train_triplets(
        identities,
        model=model,
        trainable="head",
        cache_views=views,
        epochs=epochs,
        steps_per_epoch=steps,
        batch_size=16,
        mining=mining,
        lr=1e-3,
        seed=TRAIN_SEED,
        progress=False,
        max_seconds=limit_s,
        source="heidelberg/references",
    )


def main() -> None:
    args = C.parse_args(
        __doc__.splitlines()[0],
        lambda p: (
            p.add_argument(
                "--recaptures", type=int, default=None, help="queries per reference (default 2; --quick 1)"
            ),
            p.add_argument(
                "--views", type=int, default=None, help="training views per papyrus (default 16; --quick 8)"
            ),
            p.add_argument(
                "--epochs",
                type=int,
                default=None,
                help="training epochs of 50 steps (default 40; --quick 20)",
            ),
            p.add_argument(
                "--train-limit",
                type=float,
                default=300.0,
                help="seconds each training may take (default 300)",
            ),
        ),
    )
    C.setup_environment()
    load_start = C.load_average()
    import torch

    from papyrus_widgets.evaluation import MemoryIndex, evaluate, load_queries, make_queries
    from papyrus_widgets.model import SiameseResNet18
    from papyrus_widgets.training import load_references

    recaptures = args.recaptures or (1 if args.quick else 2)
    views = args.views or (8 if args.quick else 16)
    epochs = args.epochs or (20 if args.quick else 40)
    steps = 50
    threads = torch.get_num_threads()

    t0 = time.perf_counter()
    references = load_queries(C.REFERENCES)  # every file: (path, inventory)
    queries = make_queries(C.REFERENCES, recaptures, seed=QUERY_SEED)
    identities = load_references(C.REFERENCES)
    print(
        f"index: {len(references)} reference images of {len(identities)} papyri; "
        f"{len(queries)} queries ({recaptures} re-photograph(s) per distinct scan, seed {QUERY_SEED}); "
        f"torch threads {threads}; data ready in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )

    torch.manual_seed(INIT_SEED)
    untrained = SiameseResNet18().eval()
    trained: dict[str, Any] = {}
    train_seconds: dict[str, float] = {}
    for mining in ("batch_hard", "random"):
        s0 = time.perf_counter()
        trained[mining] = train(
            untrained,
            identities,
            mining=mining,
            views=views,
            epochs=epochs,
            steps=steps,
            limit_s=args.train_limit,
        )
        train_seconds[mining] = time.perf_counter() - s0
        summary = trained[mining].training_summary
        print(
            f"trained ({mining}): {summary['steps_done']} steps of batch 16 on {views} cached views per papyrus "
            f"in {train_seconds[mining]:.0f} s, final loss {summary['final_loss']:.3f}"
            + (" (stopped at the time limit)" if summary["stopped_at_time_limit"] else ""),
            flush=True,
        )

    indexes = {
        name: MemoryIndex(model, references)
        for name, model in [
            ("untrained", untrained),
            ("batch_hard", trained["batch_hard"]),
            ("random", trained["random"]),
        ]
    }
    rows = [
        ("untrained", "untrained", False),
        ("trained (batch-hard)", "batch_hard", False),
        ("trained (random negatives)", "random", False),
        ("untrained + verification", "untrained", True),
        ("trained + verification", "batch_hard", True),
    ]
    results = {}
    for label, which, verified in rows:
        s0 = time.perf_counter()
        results[label] = evaluate(indexes[which], queries, k=K, verify=verified, label=label)
        print(f"{results[label]}  [{time.perf_counter() - s0:.0f} s]", flush=True)

    r = results
    t1 = {label: res.top1 for label, res in r.items()}
    verify_ms = [o.seconds * 1000 for o in r["trained + verification"].outcomes]
    plain_ms = [o.seconds * 1000 for o in r["trained (batch-hard)"].outcomes]
    ratios = {
        "trained / untrained top-1": C.ratio(t1["trained (batch-hard)"], t1["untrained"]),
        "trained+verification / trained top-1": C.ratio(
            t1["trained + verification"], t1["trained (batch-hard)"]
        ),
        "batch-hard / random negatives top-1": C.ratio(
            t1["trained (batch-hard)"], t1["trained (random negatives)"]
        ),
        "trained / untrained mAP": C.ratio(
            r["trained (batch-hard)"].mean_average_precision, r["untrained"].mean_average_precision
        ),
    }
    print()
    print(C.table([(k, v) for k, v in ratios.items()], ["ratio", "value"]))
    print()
    print(
        C.table(
            [
                (
                    label,
                    res.top1,
                    res.top5,
                    res.mean_average_precision,
                    res.recall_at_k,
                    res.seconds_per_query * 1000,
                )
                for label, res in r.items()
            ],
            ["search", "top-1", "top-5", "mAP", f"recall@{K}", "ms/query"],
        )
    )
    print(
        f"\nverification per query (10 candidates, reference features cached after first use): "
        f"p50 {np.median(verify_ms) - np.median(plain_ms):.0f} ms over the embedding search "
        f"(p50 {np.median(verify_ms):.0f} ms vs {np.median(plain_ms):.0f} ms)"
    )
    checks = {
        "trained beats untrained (top-1)": t1["trained (batch-hard)"] > t1["untrained"],
        "verification improves top-1": t1["trained + verification"] > t1["trained (batch-hard)"],
    }
    for what, ok in checks.items():
        print(f"{'yes' if ok else 'NO '}  {what}")

    result = {
        "title": "Retrieval quality: untrained vs trained vs trained + verification (same queries)",
        "quick": args.quick,
        "k": K,
        "index_images": len(references),
        "papyri": len(identities),
        "queries": len(queries),
        "recaptures_per_reference": recaptures,
        "query_seed": QUERY_SEED,
        "training": {
            "trainable": "head",
            "cache_views": views,
            "epochs": epochs,
            "steps_per_epoch": steps,
            "batch_size": 16,
            "seed": TRAIN_SEED,
            "init_seed": INIT_SEED,
            "time_limit_s": args.train_limit,
            "seconds": train_seconds,
            "steps_done": {m: trained[m].training_summary["steps_done"] for m in trained},
            "final_loss": {m: trained[m].training_summary["final_loss"] for m in trained},
        },
        "results": {label: res.metrics() for label, res in r.items()},
        "ratios": ratios,
        "checks": checks,
        "verification_ms_per_query_p50": float(np.median(verify_ms) - np.median(plain_ms)),
        "torch_threads": threads,
        "load_average_start": load_start,
    }
    C.write_result(args.out, NAME, result)


if __name__ == "__main__":
    main()
