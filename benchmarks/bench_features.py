"""Figure 7 — local features (SIFT): one pass against detecting, then computing, in one process.

Every search spends most of its own CPU time before the database on the photo's SIFT keypoints
(4,000 at a long side of 1,600 px, chosen balanced over scales from four times as many
proposed), a search that confirms nothing also on its tilted views' (four views of 1,000), and
every ingested scan on its own (1,000 at 768 px and, since 2026-12-04, 500 more at half that,
since 2026-12-06 300 and 250 more at a third and a quarter: ``features.describe_reference``;
figure 7's scan figures in results.md were measured before, on the first look alone). Each
proposes keypoints, keeps some, and describes those kept.

- **now**: the package as it is (``features._sift_balanced`` with ``features.ONE_PASS``:
  ``detectAndCompute`` once, then the descriptors of the keypoints kept);
- **baseline**: the same package with ``features.ONE_PASS`` off, the way before (detect, keep,
  ``compute`` the kept ones: OpenCV builds the Gaussian pyramid a second time).

Inputs: scene photos of the Heidelberg references made by ``papyrus_widgets.scenes`` (1,600 x
1,200, the papyrus at 10-40 % of the frame), the query's features through the search's own
function (``tasks._query_features``) and its tilted views (``features.tilted_features``); the
reference scans decoded at the features' size (768 px) and described as ``tasks.ingest_batch_task``
describes them (``features.describe_reference``).
**Reading stored features** (kind *read*): each scan's features as ingest stores them
(``features/…npz``), decoded by ``Features.from_bytes`` as the confirming stage does for every
candidate its worker has not kept — written uncompressed (**now**, ``features.STORE_COMPRESSED``
off) against compressed (**baseline**, as before 2026-12-06); ``READS`` reads per timed job, and
the bytes of each.

Both arms run on the same images in this process, alternated (the order flips each repeat),
each timed on one thread of the caller with OpenCV's own threads as a worker has them; the
outputs are compared keypoint for keypoint and byte for byte.

Run alone: ``python benchmarks/bench_features.py [--quick]``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

NAME = "features"
SEED = 7700
READS = 20
"""Reads per timed job of the *read* kind (one read takes milliseconds)."""


def _same(a: Any, b: Any) -> bool:
    return bool(np.array_equal(a.points, b.points) and np.array_equal(a.descriptors, b.descriptors))


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def measure(
    jobs: dict[str, list[Callable[[], Any]]], repeats: int, switch: str = "ONE_PASS", now: bool = True
) -> dict[str, Any]:
    """Each job of each kind in both arms (``features.<switch>`` ``now`` and not), alternated; per
    kind the medians, the median per-job ratio now / baseline, and how many jobs gave the same
    features both ways."""
    from papyrus_widgets.retrieval import features as F

    arms = {"now": now, "baseline": not now}
    out: dict[str, Any] = {}
    for kind, fns in jobs.items():
        times: dict[str, list[list[float]]] = {"now": [[] for _ in fns], "baseline": [[] for _ in fns]}
        same = 0
        for i, fn in enumerate(fns):
            results: dict[str, Any] = {}
            for rep in range(repeats):
                order = ("now", "baseline") if (i + rep) % 2 == 0 else ("baseline", "now")
                for arm in order:
                    setattr(F, switch, arms[arm])
                    try:
                        seconds, results[arm] = _timed(fn)
                    finally:
                        setattr(F, switch, now)
                    times[arm][i].append(seconds)
            same += _same(results["now"], results["baseline"])
        per_job = {arm: [float(np.median(t)) for t in ts] for arm, ts in times.items()}
        out[kind] = {
            "jobs": len(fns),
            "now": C.summary(per_job["now"]),
            "baseline": C.summary(per_job["baseline"]),
            "ratio_median": float(np.median(np.array(per_job["now"]) / np.array(per_job["baseline"]))),
            "same_features": same,
        }
        print(
            f"{kind:<10} {len(fns):>3} jobs  now p50 {out[kind]['now']['p50']:.3f} s  "
            f"baseline p50 {out[kind]['baseline']['p50']:.3f} s  ratio {out[kind]['ratio_median']:.2f}x  "
            f"same features {same}/{len(fns)}",
            flush=True,
        )
    return out


def main() -> None:
    import cv2

    from papyrus_widgets import imaging, scenes, tasks
    from papyrus_widgets.retrieval import features as F

    args = C.parse_args(__doc__.splitlines()[0])
    C.setup_environment()
    load_start = C.load_average()
    refs = C.reference_images()[: 8 if args.quick else 24]
    repeats = 2 if args.quick else 3
    data = [p.read_bytes() for p in refs]
    scans = [imaging.decode_image(d, max_pixels=400_000_000) for d in data]
    made = scenes.make_scenes([(p.name, im) for p, im in zip(refs, scans)], scans, 1, SEED)
    photos = [
        imaging.decode_image(imaging.jpeg_bytes(scene.image, 90), max_side=tasks.PHOTO_MAX_SIDE) for _, scene in made
    ]
    bases = [tasks._query_features(p, None) for p in photos]
    stored = [imaging.decode_image(d, max_side=F.MAX_SIDE) for d in data]  # the features' size (ingest: 1,024)

    def query(p: Any) -> Callable[[], Any]:
        return lambda: tasks._query_features(p, None)

    def tilted(p: Any, base: Any) -> Callable[[], Any]:
        return lambda: F.tilted_features(p, base)

    def scan(img: Any) -> Callable[[], Any]:
        return lambda: F.describe_reference(img, size=img.info.get("original_size"))

    jobs = {
        "photo": [query(p) for p in photos],
        "tilted": [tilted(p, b) for p, b in zip(photos, bases)],
        "scan": [scan(img) for img in stored],
    }
    print(f"{len(photos)} photos, {len(stored)} scans, {repeats} repeats per arm; OpenCV threads {cv2.getNumThreads()}")
    kinds = measure(jobs, repeats)
    # stored features read back (what the confirming stage does for each candidate its worker has
    # not kept): written as the package writes them (now) and the other way (baseline), decoded by
    # Features.from_bytes
    described = [F.describe_reference(img, size=img.info.get("original_size")) for img in stored]
    current = F.STORE_COMPRESSED
    blobs: dict[bool, list[bytes]] = {}
    for compressed in (current, not current):
        F.STORE_COMPRESSED = compressed
        blobs[compressed] = [d.to_bytes() for d in described]
    F.STORE_COMPRESSED = current

    def read(i: int) -> Callable[[], Any]:
        def job() -> Any:
            blob = blobs[F.STORE_COMPRESSED][i]
            for _ in range(READS - 1):
                F.Features.from_bytes(blob)
            return F.Features.from_bytes(blob)

        return job

    kinds.update(measure({"read": [read(i) for i in range(len(described))]}, repeats, "STORE_COMPRESSED", current))
    kinds["read"]["per_job_reads"] = READS
    kinds["read"]["bytes_median"] = {
        arm: float(np.median([len(b) for b in blobs[compressed]]))
        for arm, compressed in (("now", current), ("baseline", not current))
    }
    sizes = kinds["read"]["bytes_median"]
    print(f"read: bytes median now {sizes['now']:.0f}, baseline {sizes['baseline']:.0f}", flush=True)
    result = {
        "load_average_start": load_start,
        "candidates_per_keypoint": F.CANDIDATES_PER_KEYPOINT,
        "photos": len(photos),
        "scans": len(stored),
        "repeats": repeats,
        "opencv_threads": cv2.getNumThreads(),
        "seed": SEED,
        "kinds": kinds,
    }
    C.write_result(args.out, NAME, result)


if __name__ == "__main__":
    main()
