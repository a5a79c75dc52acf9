"""Figure — finding a papyrus from a photo that looks like real use, among ~10,000 real images.

**Index.** The Heidelberg references (real scans) of 32 papyri, ingested by ``Engine.ingest`` with
their HGV records; 8 more papyri (seeded choice) are held out: they are queried, never indexed.
Around them, ``--distractors`` (default 10,000) crops of other real papyrus photographs — the
Michigan, Princeton and BnF photographs in ``more/`` and the PapyrusViz fragments (colour,
infrared, joins) — at random positions, sizes (15-80 % of the short side), quarter turns and colour
shifts, long side ≤ 1024 px. Their rows are made by the ingest's own functions
(``retrieval.extract_features``, the vocabulary, ``shortlist.document_postings``, the model) in two
processes, outside Dask, and COPY'd with ``index.add_images``; their features go to the object store
where the confirming stage reads them. The vocabulary is the shipped one, trained on descriptors of
those same ``more/`` and ``fragments/`` photographs and of no Heidelberg scan: no queried papyrus is
in any training set (the model is the seeded, untrained network of every benchmark).

**Queries.** ``papyrus_widgets.scenes`` (independent of the training generator ``recapture``):
each reference shown in an image viewer on a laptop screen among other windows, a dock and a
filmstrip of *other* papyri, photographed at an angle with moiré and glare; lying on a desk among
other papyri, a ruler, a colour chart and hands; on a light box under glass. The papyrus fills
10-40 % of a 1600 x 1200 frame; blur, noise, colour casts, JPEG 60-90. ``--per-ref`` scenes per
indexed papyrus (default 2) and per held-out papyrus (their filmstrips and desks show only other
held-out papyri, so a confirmed hit on them is a false confirmation).

**Rows** (all through the real engine — PostgreSQL, object store, Dask — on a warm 2-worker
LocalCluster, one search at a time):

- *first stage*: ``search(verify=False, k=100)``: where the right papyrus is in the fused
  word + embedding list (recall@10/50/100);
- *no corners*: the default search (``k=5``), latency p50/p95, and the region it returns against
  the scene's true outline (IoU);
- *found region*: the same photo searched again with the region the first search returned as
  corners (what the widget offers the user);
- *true corners*: searched with the scene's exact corners (a careful user);
- *held-out papyri*: how often the default search confirms anything for a papyrus not indexed;
- *baseline, today's pipeline before this change*: the embedding kNN of the whole photo (top 10)
  re-ranked by verifying those 10 against features of the photo at 768 px (as ``verify_task`` did),
  computed in this process from the same index and store, quality only.

**At 100,000** (``--derived 90000``, result ``realphoto-100k``; not part of ``make bench``): the
main figure's photos searched with no corners, whole (the first stage's list, ``search(verify=False,
k=100)``, then the default search with its confirming stage; photos of held-out papyri too) in the
10,035-image index, then again after 90,000 *derived* items are added, made from the cached
distractors' features without new pixel work: each a random window (50-85 % of each side) of one
crop's keypoints, with the visual words of those keypoints (quantised once per crop), its parent's
embedding plus a little noise, and those keypoints stored as its features (in the window's pixels,
as ingest stores a reference's), so that the confirming stage matches it like any reference. Each
size's first-stage recall and latency, top-1/top-5, confirmations, held-out confirmations and
latency, and the larger size against the smaller photo by photo (same run, same photos). Until
2026-12-07 no features of derived items were stored and this configuration measured the first stage
only.

**How small can the papyrus be** (``--fractions 0.05,0.1,0.2``, result ``realphoto-fractions``; not
part of ``make bench``): the same index, and for each share of the frame new scenes of every
indexed and held-out papyrus with the papyrus at exactly that share (the same scene kinds, seeds per
share); first-stage recall, top-1/top-5 of the default search with no corners, its latency, and the
held-out papyri confirmed. A degradation curve outside the 10-40 % the main figure draws from.

**Beyond the scenes' range** (``--variants closeup,steep,phone,turned,dim,print,relit,wavy,resent,lcd,shaky,bare``,
result ``realphoto-variants``; not part of ``make bench``): the same index, and for each of
``scenes.VARIANTS`` new scenes of every indexed and held-out papyrus (close-ups showing 35-60 % of
the papyrus; the camera tilted 45-60 degrees; 12-megapixel portrait photos stored turned with EXIF
orientation 6; frames turned a quarter or half turn without EXIF; dark, noisy, soft photos at JPEG
30-45; the papyrus as a halftone plate of a printed edition; another photograph of the papyrus than
its scan, lit from a low side, sometimes infrared; a sheet that does not lie flat; the photo as a
messenger sends it on, shrunk to 480-1,024 px; a laptop panel as a phone sees it — off-axis tone
curve, its pixels' colour stripes, flicker bands, the room's reflection, over-exposure; a camera
shaken during the exposure, the photo smeared along its path; the papyrus itself rather than its
scan, without the scan's white ground, footer bar and colour strip, as in a museum's case or on a
desk, the papyri around it alike), each searched
with no corners twice on the same cluster: as the search is now and as it would be with
``--trial``'s switches (``TRIALS``, set on the workers; default *untilted*: without the tilted
look, ``tasks.TILTED_LOOK``, which is on by default). ``--fractions`` compares with a ``--trial``
too when one is given (*words-alone*: as before Hamming embedding). The two searches of a photo
(as it is, with the trial) run one right after the other, taking turns at going first, so that a
slow spell of the machine or the warmer caches of a second search fall on both alike; each set
reports the median per-photo latency ratio and how many answers changed. Given both,
``--fractions`` and ``--variants`` run one after the other on one index (one result each). With
``--derived N`` too (results ``realphoto-fractions-100k``, ``realphoto-variants-100k``): the same,
in the index after N derived items are added (as ``--derived`` alone adds them), not at figure 0's
size; the same seeds, so the same photos as a run without ``--derived`` with the same list and
``--per-ref``.

**Another photograph of the same papyrus, real** (``--cross-capture``, result
``realphoto-crosscapture``, figure 0e; not part of ``make bench``): the PapyrusViz fragments were
photographed in colour and again in infrared. The 11 colour photographs are ingested as
references; the distractors are figure 0's sequence without those cut from an infrared photograph
(as many kept: ``--distractors``); each of the 10 infrared photographs is searched with no corners
as the file itself and in :data:`CROSS_CAPTURE_SCENES` scenes among other papyri (none a
fragment). A hit is right when it shows the fragment in colour (its reference, or a crop of its
colour photograph or of a colour join holding it); first-stage recall, top-1/top-5, confirmed,
latency, and the pipeline before this change on the same photos.
With ``--derived N`` too (result ``realphoto-crosscapture-100k``): the same queries' first stage
alone (``verify=False``, k=100) in that index and again after N derived items are added (none
from a crop of a fragment's photograph), as figure 0b does for figure 0's photos.

**What lies beside the papyrus, real** (``--furniture``, result ``realphoto-furniture``, figure 0f;
not part of ``make bench``; no services): Michigan's scans of the recto and the verso of P.Mich.
1203 C1 11 (``more/michigan``) each show the same colour chart and ruler down one side. Each side
is photographed in ``--per-ref`` scenes (default :data:`FURNITURE_SCENES`; seed ``SEED + 700``,
not the development seeds the gate was chosen on) among Heidelberg scans, and each photo's
features (as a search makes them) are matched with both scans as ingest describes them: how
often the photo confirms its own scan, and the other side's (through the chart: a photo of any
papyrus of that imaging campaign could), with ``retrieval.confirm.EDGE_CHECK`` on (now) and off
(before 2026-12-07), on the same matches; the other side's inliers and edge depths.

**Distractors dressed as the library's scans** (``--dressed F``, figure 0g; any of the above): that
share of the distractors on a white ground above the footer bar of a held-out Heidelberg scan
(:data:`DRESSED`), as every image of one library's collection carries it; their own cache.

Run alone: ``python benchmarks/bench_realphoto.py [--quick] [--distractors N] [--per-ref N] [--derived N] [--dressed F]
[--fractions F,F,...] [--variants V,V,...]
[--trial NAME (TRIALS)]
[--cross-capture] [--furniture]``.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

NAME = "realphoto"
SEED = 2026
HELD_OUT = 8
distractor_sources = C.distractor_sources


def _load(paths: list[Path], max_side: int | None) -> list[Any]:
    from papyrus_widgets import imaging

    return [imaging.decode_image(p.read_bytes(), max_side=max_side, max_pixels=400_000_000) for p in paths]


def _load_sources(max_side: int) -> list[Any]:
    return _load(distractor_sources(), max_side)


_SOURCES: list[Any] | None = None
_FOOTERS: list[Any] | None = None

DRESSED = 0.0
"""The share of distractors dressed as the library's scans (``--dressed``; 0: none, figure 0 as
before 2026-12-07 evening): each chosen crop on a white ground above the footer bar of a Heidelberg
scan (``evaluation.dressed_as_scan``), as every image of a collection of that library's scans
carries it. The footers are those of the held-out papyri's scans, so that an indexed reference's
footer shares the library's logo, seal and the start of its address with the distractors and its
own inventory's address with none, as in the library's collection; a photo of a held-out papyrus's
scan shows the very footer of some 1,250 distractors (at 1.0, 8 footers), which is harder than any collection
makes it for the confirming stage, not easier."""


def _footers() -> list[Any]:
    """The footer bars of the held-out papyri's scans (``evaluation.scan_footer``)."""
    from papyrus_widgets.evaluation import distinct_files, scan_footer

    scans = _load(distinct_files(split_references()[1]), None)
    out = [bar for scan in scans if (bar := scan_footer(scan)) is not None]
    if not out:
        raise SystemExit("--dressed: no footer bar found on the held-out scans")
    return out


def _dressed(i: int, share: float) -> bool:
    """Whether distractor ``i`` is dressed as a scan when ``share`` of them are."""
    return share > 0 and bool(np.random.default_rng([SEED, 13, i]).random() < share)


def _distractor_rows(
    args: tuple[list[int], str, str, str, float],
) -> list[tuple[int, str, bytes, Any, Any, bytes, tuple[int, int]]]:
    """(i, sha, features .npz, words, weights, model input bytes, size) of distractors ``ids``,
    ``dressed`` of them as the library's scans (:data:`DRESSED`)."""
    ids, _model, _revision, vocabulary, dressed = args
    global _SOURCES, _FOOTERS
    import cv2

    from papyrus_widgets import imaging
    from papyrus_widgets.evaluation import distractor_crop, dressed_as_scan
    from papyrus_widgets.retrieval.features import describe_reference
    from papyrus_widgets.retrieval.shortlist import document_weights
    from papyrus_widgets.retrieval.vocabulary import load_vocabulary

    cv2.setNumThreads(1)
    if _SOURCES is None:
        _SOURCES = _load_sources(3000)
    if dressed and _FOOTERS is None:
        _FOOTERS = _footers()
    vocab = load_vocabulary(vocabulary or None)
    out = []
    for i in ids:
        crop = distractor_crop(_SOURCES, i, SEED)
        if _dressed(i, dressed):
            crop = dressed_as_scan(crop, _FOOTERS or [], i, SEED)
        data = imaging.jpeg_bytes(crop, 90)
        sha = hashlib.sha256(data).hexdigest()
        feats = describe_reference(crop)
        # kept in the cache for its format; the rows are made from the postings (``write``)
        words, weights = document_weights(vocab.words(feats.descriptors))
        out.append((i, sha, feats.to_bytes(), words, weights, imaging.model_input(crop).tobytes(), crop.size))
    return out


CACHE = C.OUT_DIR / "realphoto-cache"
"""Distractor rows made once (features, words, embeddings), reused by later runs with the same
seed, vocabulary, feature bounds and model (test-output/ is git-ignored)."""
CHUNK = 250


def _save_chunk(path: Path, batch: list[Any], vectors: np.ndarray) -> None:
    from papyrus_widgets.retrieval import Features

    feats = [Features.from_bytes(b[2]) for b in batch]
    np.savez(
        path,
        ids=np.array([b[0] for b in batch]),
        shas=np.array([b[1] for b in batch]),
        sizes=np.array([b[6] for b in batch]),
        vectors=vectors.astype(np.float32),
        words=np.concatenate([b[3] for b in batch]),
        weights=np.concatenate([b[4] for b in batch]),
        word_counts=np.array([len(b[3]) for b in batch]),
        points=np.concatenate([f.points for f in feats]),
        descriptors=np.concatenate([f.descriptors for f in feats]),
        feature_counts=np.array([len(f) for f in feats]),
        feature_sizes=np.array([f.size for f in feats]),
        work_sides=np.array([f.work_side for f in feats]),
        coarse=np.array([f.coarse for f in feats]),
        params=np.array(feats[0].params),
    )


def _load_chunk(path: Path) -> tuple[list[Any], np.ndarray]:
    from papyrus_widgets.retrieval import Features

    z = np.load(path)
    w_off = np.concatenate([[0], np.cumsum(z["word_counts"])])
    f_off = np.concatenate([[0], np.cumsum(z["feature_counts"])])
    batch = []
    for j, i in enumerate(z["ids"]):
        feats = Features(
            z["points"][f_off[j] : f_off[j + 1]],
            z["descriptors"][f_off[j] : f_off[j + 1]],
            tuple(int(v) for v in z["feature_sizes"][j]),  # type: ignore[arg-type]
            "sift",
            int(z["work_sides"][j]),
            str(z["params"]),
            coarse=int(z["coarse"][j]),
        )
        words = z["words"][w_off[j] : w_off[j + 1]]
        weights = z["weights"][w_off[j] : w_off[j + 1]]
        batch.append((int(i), str(z["shas"][j]), feats.to_bytes(), words, weights, b"", tuple(z["sizes"][j])))
    return batch, z["vectors"]


def _cache_dir(vocabulary: str, model: str) -> Path:
    """The cache of distractor rows made with this seed, vocabulary, feature params and model (and
    share dressed as scans, :data:`DRESSED`)."""
    from papyrus_widgets.retrieval.features import reference_params

    dressed = f"-dressed{DRESSED:g}" if DRESSED else ""
    return CACHE / f"{SEED}-{vocabulary}-{reference_params().replace('/', '_').replace('+', '_')}-{model}{dressed}"


def add_distractors(engine: Any, settings: Any, n: int, keep: Any = None) -> tuple[float, int]:
    """Index ``n`` distractor crops (those ``keep(i)`` accepts, when given); returns (seconds,
    chunks read from the cache)."""
    from papyrus_widgets import index, storage, tasks
    from papyrus_widgets.metadata import PapyrusRecord
    from papyrus_widgets.model import embed_arrays
    from papyrus_widgets.retrieval import Features
    from papyrus_widgets.retrieval.shortlist import document_postings

    t0 = time.perf_counter()
    model, fingerprint = tasks.worker_model(settings.model, settings.model_revision)
    vocab = tasks.worker_vocabulary(settings)
    cache = _cache_dir(vocab.fingerprint, fingerprint)
    cache.mkdir(parents=True, exist_ok=True)
    store = engine.store
    chunks = [list(range(s, min(n, s + CHUNK))) for s in range(0, n, CHUNK)]
    todo = [c for c in chunks if not (cache / f"chunk-{c[0]:06d}-{len(c)}.npz").exists()]
    url = settings.database_url
    args = [(c, settings.model, settings.model_revision or "", settings.vocabulary or "", DRESSED) for c in todo]

    def write(batch: list[Any], vectors: np.ndarray) -> None:
        rows = []
        for (i, sha, feats, _words, _weights, _, size), vec in zip(batch, vectors):
            if keep is not None and not keep(i):
                continue
            key = storage.object_key(storage.ORIGINALS, sha, ".jpg")
            store.put(storage.features_key(key), feats)
            # the postings as the ingest makes them (words with their keypoints' signatures), from
            # the stored features: chunks cached before signatures hold the words alone
            words, weights, signatures = document_postings(
                *vocab.words_and_signatures(Features.from_bytes(feats).descriptors)
            )
            rows.append(
                index.ImageRow(
                    record=PapyrusRecord(key=f"distractor:{i}", collection="distractors", title=f"distractor {i}"),
                    sha256=sha,
                    source_name=f"distractor-{i}.jpg",
                    object_key=key,
                    thumb_key=storage.object_key(storage.THUMBNAILS, sha, ".jpg"),
                    width=int(size[0]),
                    height=int(size[1]),
                    model=fingerprint,
                    embedding=vec,
                    words=words,
                    word_weights=weights,
                    word_signatures=signatures,
                )
            )
        with index.pooled_connection(url) as conn:
            index.add_images(conn, rows)

    with mp.get_context("spawn").Pool(2) as pool, index.hnsw_deferred(url):
        done = 0
        for c in chunks:
            path = cache / f"chunk-{c[0]:06d}-{len(c)}.npz"
            if path.exists():
                batch, vectors = _load_chunk(path)
                write(batch, vectors)
                done += len(c)
        cached = done
        for batch in pool.imap(_distractor_rows, args):
            arrays = np.stack([np.frombuffer(b, dtype=np.float32).reshape(3, 224, 224) for *_, b, _ in batch])
            vectors = embed_arrays(model, arrays)
            _save_chunk(cache / f"chunk-{batch[0][0]:06d}-{len(batch)}.npz", batch, vectors)
            write(batch, vectors)
            done += len(batch)
            print(f"  distractors: {done}/{n} in {time.perf_counter() - t0:.0f} s", flush=True)
    return time.perf_counter() - t0, cached // CHUNK


def _cached_crops(settings: Any, accept: Any) -> int:
    """How many of the cached distractor crops ``accept(i)`` accepts (the derived items' parents)."""
    from papyrus_widgets import tasks

    _, fingerprint = tasks.worker_model(settings.model, settings.model_revision)
    cache = _cache_dir(tasks.worker_vocabulary(settings).fingerprint, fingerprint)
    return sum(accept(int(i)) for path in sorted(cache.glob("chunk-*.npz")) for i in np.load(path)["ids"])


class _Parent(NamedTuple):
    """A cached distractor crop as derived items are cut from it: its keypoints (stored pixels), their
    visual words and signatures, its embedding and size, and its stored features' descriptors, long
    side of work, parameters and count of coarse keypoints (the last ones)."""

    points: np.ndarray
    words: np.ndarray
    signatures: np.ndarray
    vector: np.ndarray
    size: tuple[int, int]
    descriptors: np.ndarray
    work_side: int
    params: str
    coarse: int


def add_derived(settings: Any, n: int, parent_ok: Any = None, store: Any = None) -> float:
    """Index ``n`` derived items (see the module's docstring) from the cached distractor chunks (those
    crops ``parent_ok(i)`` accepts, when given); with ``store`` (an object store), each derived item's
    features too, as ingest stores a reference's (:func:`_derived_features`), so that the confirming
    stage can match it."""
    from papyrus_widgets import index, tasks

    t0 = time.perf_counter()
    _, fingerprint = tasks.worker_model(settings.model, settings.model_revision)
    vocab = tasks.worker_vocabulary(settings)
    paths = sorted(_cache_dir(vocab.fingerprint, fingerprint).glob("chunk-*.npz"))
    if not paths:
        raise SystemExit("--derived needs the cached distractor chunks: run without it first")
    rng = np.random.default_rng([SEED, 100_000])
    parents: list[_Parent] = []
    for path in paths:  # each crop's keypoints with their words, quantised once
        # each array read once per chunk: ``z[name]`` decompresses the whole array on every access,
        # and a slice of it keeps all of it alive (one copy per parent ran a 100k build out of memory)
        with np.load(path) as z:
            ids, points, vectors, sizes = z["ids"], z["points"], z["vectors"], z["feature_sizes"]
            f_off = np.concatenate([[0], np.cumsum(z["feature_counts"])])
            descriptors, work_sides, params, coarse = z["descriptors"], z["work_sides"], str(z["params"]), z["coarse"]
            words, signatures = vocab.words_and_signatures(descriptors)
        for j in range(len(ids)):
            if parent_ok is not None and not parent_ok(int(ids[j])):
                continue
            a, b = f_off[j], f_off[j + 1]
            size = (int(sizes[j][0]), int(sizes[j][1]))
            parents.append(
                _Parent(
                    points[a:b],
                    words[a:b],
                    signatures[a:b],
                    vectors[j],
                    size,
                    descriptors[a:b],
                    int(work_sides[j]),
                    params,
                    int(coarse[j]),
                )
            )
    print(f"  derived: {len(parents)} parents quantised in {time.perf_counter() - t0:.0f} s", flush=True)
    url = settings.database_url
    with index.hnsw_deferred(url):  # one HNSW build at the end, then VACUUM (ANALYZE) as an ingest does
        _add_derived_rows(url, parents, n, fingerprint, rng, t0, store)
    return time.perf_counter() - t0


def _derived_features(parent: _Parent, inside: np.ndarray, x0: float, y0: float, size: tuple[int, int]) -> Any:
    """The stored features of a derived item: its parent's keypoints ``inside`` its window (whose top
    left corner is ``x0, y0`` in the parent's pixels, ``size`` its size), in the window's pixels, at
    the parent's scale of work (``Features.work_scale``: the window is not shrunk again), the coarse
    ones still last."""
    from papyrus_widgets.retrieval import Features

    kept = np.flatnonzero(inside)
    return Features(
        (parent.points[kept] - np.array([x0, y0], dtype=np.float32)).astype(np.float32),
        parent.descriptors[kept],
        size,
        "sift",
        parent.work_side,
        parent.params,
        work_scale=parent.work_side / max(parent.size),
        coarse=int((kept >= len(parent.points) - parent.coarse).sum()),
    )


def _add_derived_rows(
    url: str, parents: list[_Parent], n: int, fingerprint: str, rng: Any, t0: float, store: Any = None
) -> None:
    from papyrus_widgets import index, storage
    from papyrus_widgets.metadata import PapyrusRecord
    from papyrus_widgets.retrieval.shortlist import document_postings

    done = 0
    while done < n:
        rows = []
        for i in range(done, min(n, done + 2000)):
            parent = parents[int(rng.integers(len(parents)))]
            points, (w, h) = parent.points, parent.size
            fw, fh = rng.uniform(0.5, 0.85, 2)
            x0, y0 = rng.uniform(0, 1 - fw) * w, rng.uniform(0, 1 - fh) * h
            inside = (points[:, 0] >= x0) & (points[:, 0] < x0 + fw * w)
            inside &= (points[:, 1] >= y0) & (points[:, 1] < y0 + fh * h)
            size = (int(fw * w), int(fh * h))
            if inside.sum() < 80:  # too few keypoints in the window: the whole crop
                inside[:] = True
                x0, y0, size = 0.0, 0.0, (w, h)
            distinct, weights, postings = document_postings(parent.words[inside], parent.signatures[inside])
            vec = parent.vector + rng.normal(0, 0.02, parent.vector.shape).astype(np.float32)
            sha = hashlib.sha256(f"derived-{SEED}-{i}".encode()).hexdigest()
            key = storage.object_key(storage.ORIGINALS, sha, ".jpg")
            if store is not None:
                store.put(storage.features_key(key), _derived_features(parent, inside, x0, y0, size).to_bytes())
            rows.append(
                index.ImageRow(
                    record=PapyrusRecord(key=f"derived:{i}", collection="derived", title=f"derived {i}"),
                    sha256=sha,
                    source_name=f"derived-{i}",
                    object_key=key,
                    thumb_key=storage.object_key(storage.THUMBNAILS, sha, ".jpg"),
                    width=size[0],
                    height=size[1],
                    model=fingerprint,
                    embedding=vec / np.linalg.norm(vec),
                    words=distinct,
                    word_weights=weights,
                    word_signatures=postings,
                )
            )
        with index.pooled_connection(url) as conn:
            index.add_images(conn, rows)
        done += len(rows)
        if done % 10_000 == 0 or done == n:
            print(f"  derived: {done}/{n} in {time.perf_counter() - t0:.0f} s", flush=True)


def at_scale(
    engine: Any,
    settings: Any,
    positives: list[Any],
    negatives: list[Any],
    n_derived: int,
    trial: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Figure 0's no-corner search, whole (the first stage's list, ``verify=False`` and k=100, then the
    default search with its confirming stage), of figure 0's photos of indexed papyri (``positives``)
    and of held-out ones (``negatives``) in the index as it is, then again after ``n_derived`` derived
    items are added with their features stored (:func:`add_derived`); each size's figures
    (:func:`_scale_entry`), and the larger against the smaller (:func:`per_photo_ratios`: the median
    per-photo latency ratio, the answers that differ). With ``trial`` (:data:`TRIALS`), each photo
    searched with its switches too, right after or before (:func:`both_ways`), at both sizes."""
    from papyrus_widgets import index

    sizes: list[dict[str, Any]] = []
    for n in (0, n_derived):
        build_s = add_derived(settings, n, store=engine.store) if n else 0.0
        with index.connect(settings.database_url) as conn:
            total = index.image_count(conn)
        engine.search(positives[0].data, k=5)  # warm: the index just grew
        if trial is None:
            rows, held = [_fraction_row(engine, q) for q in positives], held_out_searches(engine, negatives)
            entry = _scale_entry(total, n, rows, held)
        else:
            print(f"  … each photo searched as it is and with {trial}, alternately first", flush=True)
            arms = {"now": _current(trial), "trial": trial}
            rows_by, held_by, compared = _compared(engine, arms, positives, negatives, _fraction_row)
            entry = _scale_entry(total, n, rows_by["now"], held_by["now"])
            entry["trial"] = {"switches": trial, **_scale_entry(total, n, rows_by["trial"], held_by["trial"], "trial")}
            entry.update(compared)
            print(f"{total} images: trial / now per photo {compared}", flush=True)
        entry["build_seconds"] = build_s
        sizes.append(entry)
    small, large = sizes
    growth = {
        "per_photo": per_photo_ratios(small["rows"], large["rows"]),
        "held_out_per_photo": per_photo_ratios(small["held_out_rows"], large["held_out_rows"]),
    }
    print(f"{large['images']} against {small['images']} images, per photo: {growth}", flush=True)
    return {"name": NAME + "-100k", "sizes": sizes, "larger_against_smaller": growth, "load_average": C.load_average()}


def split_references() -> tuple[list[Path], list[Path]]:
    """(indexed, held out) reference files: ``HELD_OUT`` papyri (by inventory, seeded) held out."""
    from papyrus_widgets.evaluation import held_out_split

    return held_out_split(C.reference_images(), HELD_OUT, SEED)


def rank_of(hits: list[Any], truth: str) -> int | None:
    for h in hits:
        if h.inventory_key == truth:
            return int(h.rank)
    return None


def timed_search(engine: Any, data: bytes, **kw: Any) -> tuple[Any, float, dict[str, float]]:
    """``engine.search(data, **kw)``: its results, its latency (s) and the seconds each of its
    stages computed on the workers, from the scheduler's task stream (``prepare``, ``embed``,
    ``search``, ``verify``: the first look, ``look-again``: the second and the tilted looks; the
    rest of the latency is waiting, transfers and the client), so that a slow search says where
    its time went."""
    from distributed import get_task_stream

    with get_task_stream(client=engine.client) as stream:
        t = time.perf_counter()
        res = engine.search(data, **kw)
        latency = time.perf_counter() - t
    stages: dict[str, float] = {}
    for record in stream.data:
        key = record["key"] if isinstance(record["key"], str) else str(record["key"][0])
        if key.startswith("papyrus-"):
            stage = key[len("papyrus-") :].rsplit("-", 1)[0]
            busy = sum(s["stop"] - s["start"] for s in record["startstops"] if s["action"] == "compute")
            stages[stage] = round(stages.get(stage, 0.0) + busy, 3)
    return res, latency, stages


def baseline_today(engine: Any, settings: Any, data: bytes, field: str = "inventory_key") -> list[str | None]:
    """The default search before this change: embedding kNN of the whole photo ``data`` (top 10), each
    verified against the photo's features at 768 px / 1000 keypoints (the references' first look alone), scores blended
    (``embedding + (1 - embedding) * support``); returns the hits' ``field`` (the inventory keys),
    best first."""
    from papyrus_widgets import imaging, index, tasks
    from papyrus_widgets.model import embed_arrays
    from papyrus_widgets.retrieval import blend, extract_features, match

    img = imaging.decode_image(data, max_side=2048)
    model, _ = tasks.worker_model(settings.model, settings.model_revision)
    vec = embed_arrays(model, imaging.model_input(img)[None])[0]
    with index.pooled_connection(settings.database_url) as conn:
        rows = index.knn(conn, vec, 10)
    small = imaging.decode_image(data, max_side=768)
    qf = extract_features(small, size=small.info.get("original_size"))
    scored = []
    for r in rows:
        emb = 1.0 - float(r["distance"])
        try:
            v = match(qf, tasks.reference_features(settings, r["object_key"]).fine())
            s = blend(emb, v.support)
        except Exception:  # noqa: BLE001
            s = emb
        scored.append((s, emb, r[field]))
    scored.sort(key=lambda t: (-t[0], -t[1]))
    return [t[2] for t in scored]


def held_out_searches(engine: Any, negatives: list[Any]) -> list[dict[str, Any]]:
    """The default search of each photo of a papyrus not in the index: whether anything was
    confirmed (it should not be; then what, with its evidence, so that a false confirmation can be
    looked at afterwards), the most inliers any of the 5 hits has (of a plausible homography; a
    wrong reference mostly has none: 0) and how long the search took."""
    out = []
    for q in negatives:
        res, latency, stages = timed_search(engine, q.data, k=5)
        row = {"name": q.name, "kind": q.kind, "confirmed": bool(res.confirmed), "latency": latency, "stages": stages}
        row["near_miss_first"] = bool(res.hits and res.hits[0].near_miss)  # the verdict names a papyrus "nearly"
        row["most_inliers"] = max((h.inliers or 0 for h in res.hits), default=0)
        wrong = [
            {"image_key": h.image_key, "inventory": h.inventory_key, "inliers": h.inliers, "region": h.region}
            for h in res.hits
            if h.confirmed
        ]
        if wrong:
            row["confirmed_hits"] = wrong
        out.append(row)
        print(f"  held-out {q.kind:<8} {q.name:<26} confirmed={row['confirmed']} most inliers {row['most_inliers']}"
              + (f" {wrong}" if wrong else ""), flush=True)  # fmt: skip
    return out


def no_corner_search(engine: Any, q: Any, **kw: Any) -> dict[str, Any]:
    """The default search (``k=5``, no corners; ``kw``: more of ``engine.search``'s arguments) of a
    photo of an indexed papyrus: the right papyrus's rank, whether the top hit is confirmed, how
    long it took, and the evidence: the top hit's file and inliers, and the right papyrus's inliers
    where it is among the 5 (so that a miss says whether another papyrus was confirmed before it,
    or nothing was)."""
    res, latency, stages = timed_search(engine, q.data, k=5, **kw)
    top = res.hits[0] if res.hits else None
    return {
        "name": q.name,
        "kind": q.kind,
        "fraction": round(q.fraction, 3),
        "rank": rank_of(res.hits, q.truth),
        "confirmed": bool(top and top.confirmed),
        "near_miss_first": bool(top and top.near_miss),
        "top": top.source_name if top else None,
        "top_inliers": top.inliers if top else None,
        "truth_inliers": next((h.inliers for h in res.hits if h.inventory_key == q.truth), None),
        "latency": latency,
        "stages": stages,
    }


def corner_search(engine: Any, q: Any) -> dict[str, Any]:
    """:func:`no_corner_search` with the scene's true corners (a careful user who marks them)."""
    return no_corner_search(engine, q, corners=q.corners)


@dataclass
class Papyri:
    """Whose photos a figure makes: the indexed and held-out reference files, the images shown
    around them (by file name), and how many photos of each."""

    indexed: list[Path]
    held: list[Path]
    others: dict[str, Any]
    held_imgs: dict[str, Any]
    per_ref: int

    def photos(self, seed: int, **kw: Any) -> tuple[list[Any], list[Any]]:
        """(photos of indexed papyri, photos of held-out ones) made by ``scene_queries(**kw)``."""
        from papyrus_widgets.evaluation import distinct_files, scene_queries

        return (
            scene_queries(distinct_files(self.indexed), self.others, self.per_ref, seed, **kw),
            scene_queries(distinct_files(self.held), self.held_imgs, self.per_ref, seed + 1, **kw),
        )


def by_fraction(
    engine: Any, papyri: Papyri, shares: list[float], total: int, trial: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The no-corner search on scenes with the papyrus at each share of the frame in ``shares``;
    with ``trial`` (:data:`TRIALS`), the same photos searched with its switches too (``trial`` in
    each share's entry), the two searches of each photo one right after the other
    (:func:`both_ways`)."""

    out: dict[str, Any] = {"name": NAME + "-fractions", "gallery": {"images": total}, "fractions": []}
    if trial:
        out["trial"] = trial
        out["alternated"] = True
    for share in shares:
        seed = SEED + 100 + int(round(share * 1000))
        positives, negatives = papyri.photos(seed, fraction=share)
        if not trial:
            rows = [_fraction_row(engine, q) for q in positives]
            out["fractions"].append(_fraction_entry(share, rows, held_out_searches(engine, negatives)))
            continue
        arms = {"now": _current(trial), "trial": trial}
        print(f"  … each photo searched as it is and with {trial}, alternately first", flush=True)
        rows_by, held_by, compared = _compared(engine, arms, positives, negatives, _fraction_row)
        measured = _fraction_entry(share, rows_by["now"], held_by["now"])
        measured["trial"] = _fraction_entry(share, rows_by["trial"], held_by["trial"], "trial")
        measured.update(compared)
        print(f"{share:.0%}: trial / now per photo {compared}")
        out["fractions"].append(measured)
    out["load_average"] = C.load_average()
    return out


def both_ways(
    engine: Any, arms: dict[str, dict[str, Any]], photos: list[Any], search: Any
) -> dict[str, list[dict[str, Any]]]:
    """``search(photo)`` of every photo under each of ``arms`` (label: switches, :func:`_switch`),
    the arms one right after the other for each photo and taking turns at going first (photo 0 in
    the order of ``arms``, photo 1 the other way round, ...): a slow spell of the machine, and the
    warmer caches the second search of a photo finds, fall on both arms alike. Rows by label, each
    with ``"first"``: whether that search of the photo ran first. The first arm's switches are set
    again at the end."""
    labels = list(arms)
    out: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    for i, q in enumerate(photos):
        order = labels if i % 2 == 0 else labels[::-1]
        for n, label in enumerate(order):
            _switch(engine, arms[label])
            out[label].append({**search(q), "first": n == 0})
    _switch(engine, arms[labels[0]])
    return out


def _fraction_row(engine: Any, q: Any) -> dict[str, Any]:
    """A photo's first-stage rank (``verify=False``, k=100) and that list's latency, then its default
    search, timed."""
    t = time.perf_counter()
    first = engine.search(q.data, k=100, verify=False)
    seconds = time.perf_counter() - t
    row = {**no_corner_search(engine, q), "first_rank": rank_of(first.hits, q.truth), "first_latency": seconds}
    print(
        f"  {q.kind:<8} {q.name:<26} first={row['first_rank']} ({seconds:.2f}s) rank={row['rank']} "
        f"conf={row['confirmed']} {row['latency']:.2f}s",
        flush=True,
    )
    return row


def _fraction_entry(
    share: float, rows: list[dict[str, Any]], held: list[dict[str, Any]], label: str = "now"
) -> dict[str, Any]:
    """One share's figures from its photos' rows (:func:`_fraction_row`) and held-out searches."""
    entry = {
        "share": share,
        "reached_median": float(np.median([r["fraction"] for r in rows])),
        **_searched(rows, held),
    }
    print(
        f"papyrus at {share:.0%} of the frame ({label}): first-stage recall@50 "
        f"{entry['first_stage']['recall@50']:.3f}, top-1 {entry['top1']:.3f}, top-5 {entry['top5']:.3f}, "
        f"held-out confirmed {entry['held_out_confirmed']}, p50 {entry['latency']['p50']:.2f} s",
        flush=True,
    )
    return entry


def _scale_entry(
    images: int, derived: int, rows: list[dict[str, Any]], held: list[dict[str, Any]], label: str = "now"
) -> dict[str, Any]:
    """One index size's figures (:func:`at_scale`) from its photos' rows (:func:`_fraction_row`) and
    held-out searches, with the first stage's own latency."""
    entry = {
        "images": images,
        "derived": derived,
        **_searched(rows, held),
        "first_stage_latency": C.summary([r["first_latency"] for r in rows]),
    }
    print(
        f"{images} images ({label}): first-stage recall@10/50/100 "
        + " / ".join(f"{entry['first_stage'][f'recall@{k}']:.3f}" for k in (10, 50, 100))
        + f", its p50 {entry['first_stage_latency']['p50']:.2f} s; top-1 {entry['top1']:.3f}, top-5 {entry['top5']:.3f}"
        f", confirmed {entry['true_match_confirmed']:.3f}, held-out confirmed {entry['held_out_confirmed']}"
        f"; p50 / p95 {entry['latency']['p50']:.2f} / {entry['latency']['p95']:.2f} s"
        f", held-out {entry['held_out_latency']['p50']:.2f} / {entry['held_out_latency']['p95']:.2f} s",
        flush=True,
    )
    return entry


def _searched(rows: list[dict[str, Any]], held: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of no-corner searches: rows of photos of indexed papyri (:func:`_fraction_row`)
    and of held-out ones (:func:`held_out_searches`)."""
    held_confirmed, held_latency = [r["confirmed"] for r in held], [r["latency"] for r in held]

    def at(key: str, k: int) -> float:
        return float(np.mean([r[key] is not None and r[key] <= k for r in rows]))

    return {
        "queries": len(rows),
        "first_stage": {f"recall@{k}": at("first_rank", k) for k in (10, 50, 100)},
        "top1": at("rank", 1),
        "top5": at("rank", 5),
        "true_match_confirmed": float(np.mean([r["rank"] == 1 and r["confirmed"] for r in rows])),
        "held_out_confirmed": float(np.mean(held_confirmed)) if held_confirmed else None,
        "held_out_queries": len(held_confirmed),
        "latency": C.summary([r["latency"] for r in rows]),
        "held_out_latency": C.summary(held_latency) if held_latency else None,
        "rows": rows,
        "held_out_rows": held,
    }


def _compared(
    engine: Any, arms: dict[str, dict[str, Any]], positives: list[Any], negatives: list[Any], search: Any
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """The photos of indexed papyri (``search(engine, photo)``) and the held-out ones (:func:`held_out_searches`)
    searched under both ``arms`` (:func:`both_ways`, labels "now" and "trial"): their rows by label,
    and ``per_photo`` / ``held_out_per_photo`` (:func:`per_photo_ratios`)."""
    rows_by = both_ways(engine, arms, positives, lambda q: search(engine, q))
    held_by = both_ways(engine, arms, negatives, lambda q: held_out_searches(engine, [q])[0])
    compared = {
        "per_photo": per_photo_ratios(rows_by["now"], rows_by["trial"]),
        "held_out_per_photo": per_photo_ratios(held_by["now"], held_by["trial"]),
    }
    return rows_by, held_by, compared


def per_photo_ratios(now: list[dict[str, Any]], trial: list[dict[str, Any]]) -> dict[str, Any]:
    """The latency ratio trial / now of each photo (rows of :func:`both_ways`, in the same order):
    their median, and how many photos' answers (rank, confirmed) differ between the two."""
    ratios = [t["latency"] / n["latency"] for n, t in zip(now, trial) if n["latency"] > 0]
    same = [(n.get("rank"), n["confirmed"]) == (t.get("rank"), t["confirmed"]) for n, t in zip(now, trial)]
    return {
        "median_ratio": float(np.median(ratios)) if ratios else None,
        "answers_changed": int(len(same) - sum(same)),
    }


TRIALS: dict[str, dict[str, Any]] = {
    "untilted": {"tasks.TILTED_LOOK": False},
    "banded": {"retrieval.features.DEBAND": False},
    "region-banded": {"retrieval.features.DEBAND_REGIONS": False},
    "words-alone": {"retrieval.vocabulary.HAMMING_THRESHOLD": 64},
    "uncached": {"tasks.PHOTO_CACHE": 0},
    "unenlarged": {"retrieval.features.QUERY_MIN_SIDE": 0},
    "control": {},
    "checks32": {"retrieval.confirm.MATCH_CHECKS": 32},
    "two-pass": {"retrieval.features.ONE_PASS": False},
    "off-centre90": {"tasks.SECOND_LOOK_AFTER_OFF_CENTRE": 90},
    "off-centre-rounds": {"retrieval.confirm.CONFIRM_AFTER_OFF_CENTRE": None},
    "fine-only": {"retrieval.confirm.MATCH_COARSE": False},
    "first-stage-order": {"retrieval.confirm.NEAR_MISS_INLIERS": None},
    "one-connection": {"tasks.PAIR_CONNECTIONS": 1},
    "inliers-alone": {"retrieval.confirm.AGREEING": False},
    "one-word": {"retrieval.vocabulary.MORE_WORDS": 0},
    "before-panels": {"retrieval.vocabulary.MORE_WORDS": 0, "retrieval.confirm.AGREEING": False},
    "tilted-cut": {"tasks.TILTED_LIST_PAST_RETRIES": False},
    "one-key": {"tasks.MERGE_BY_RECORD": False},
    "contrast02": {"retrieval.features.QUERY_CONTRAST": 0.02},
    "per-record": {"retrieval.confirm.ONE_MATCH_PER_IMAGE": False, "tasks.MERGE_BY_RECORD": False},
    "diverse": {"index.queries.DIVERSE_SHARE": 0.3, "index.queries.MIN_MATCHED": 3},
    "uncapped-rows": {"tasks.SECOND_LOOK_MAX_ROWS": None},
    "ungated": {"retrieval.confirm.MATCH_GATE": None},
    "unrectified": {"retrieval.features.RECTIFY_REGIONS": False},
    "closer-unrectified": {"tasks.RECTIFY_CLOSER_LOOK": False},
    "no-strip-check": {"retrieval.confirm.STRIP_CHECK": False},
    "no-edge-check": {"retrieval.confirm.EDGE_CHECK": False},
    "unbudgeted": {"tasks.LATER_LOOK_POSTINGS": None},
    "budgeted": {"tasks.LATER_LOOK_POSTINGS": 6_000_000},
    "region-only": {"tasks.WHOLE_PHOTO_AFTER_REGION": False},
    "common-words": {"index.queries.COMMON_WORDS": 0.1},
}
"""What ``--trial`` runs against the search as it is, on the same photos, index and cluster:
module switches of ``papyrus_widgets`` to set (``module.NAME``). *untilted*: without the tilted
look (figure 0d's default; it is on by default); *words-alone*: every pair of keypoints of a word
matches, as before Hamming embedding (64 of 64 bits may differ); *uncached*: each stage of a search
decodes the photo from the store itself, as before ``tasks.PHOTO_CACHE``; *unenlarged*: a small
photo (or region) is looked at as it is, as before ``features.QUERY_MIN_SIDE``; *checks32*: each
reference keypoint's search in the query's k-d forest visits 32 leaves, as before 2026-12-03
(``retrieval.confirm.MATCH_CHECKS``, now 16); *two-pass*: SIFT keypoints proposed, chosen, then
described, as before ``features.ONE_PASS`` (the same features, more slowly); *off-centre90*: the
second look after papyri confirmed only off the photo's middle confirms all 90 of its list, as
before 2026-12-03 (``tasks.SECOND_LOOK_AFTER_OFF_CENTRE``, now 40); *off-centre-rounds*: after a
papyrus confirmed off the photo's middle, the first look's rounds go on to 70, as before 2026-12-04
(``retrieval.confirm.CONFIRM_AFTER_OFF_CENTRE``, now 0); *banded*: a photo's flicker bands are
left in it, as before 2026-12-04 (``retrieval.features.DEBAND``); *region-banded*: a region of
the photo (its closer look) keeps its bands, as before the evening of 2026-12-04
(``retrieval.features.DEBAND_REGIONS``); *fine-only*: a reference's keypoints from its look at
half resolution are not matched, as before the night of 2026-12-04 (``retrieval.confirm.MATCH_COARSE``;
its visual words, made at ingest, stay in the index either way); *first-stage-order*: the hits not
confirmed in their first-stage order, a near miss among them too, as before 2026-12-05
(``retrieval.confirm.NEAR_MISS_INLIERS``); *one-connection*: a photo's postings read by one
statement, as before 2026-12-05 (``tasks.PAIR_CONNECTIONS``, now 2; with ``--derived`` too, the
first stage alone); *inliers-alone*: a match is confirmed by its inliers alone, as before
2026-12-05 afternoon (``retrieval.confirm.AGREEING``: the keypoints agreeing with a weak match's
homography beyond chance confirm it too; a first version of it was measured on 2026-12-05 morning
as *unguided* while on, then turned off); *one-word*: each keypoint of the photo looked up under
its own visual word alone, as before 2026-12-05 afternoon (``retrieval.vocabulary.MORE_WORDS``,
now 4: multiple assignment); *before-panels*: both, the search as it was before those two;
*tilted-cut*: the tilted look's own list cut at ``tasks.TILTED_LOOK_CANDIDATES`` before the first
look's candidates it retries are set aside, as before 2026-12-05 evening
(``tasks.TILTED_LIST_PAST_RETRIES``); *one-key*: a later look's results merged with the earlier
ones by object key alone, as before 2026-12-05 evening (``tasks.MERGE_BY_RECORD``: one scan
indexed for two records could lose the tilted look's confirmed result); *per-record*: that merge,
and each record of one scan matched on its own, as before 2026-12-05 night
(``retrieval.confirm.ONE_MATCH_PER_IMAGE``: the scan matched once, its records sharing the
verification); *contrast02*: a photo's SIFT keypoints found with half OpenCV's default contrast
threshold (``retrieval.features.QUERY_CONTRAST``: tried, not adopted); *diverse*: each
window's word list made diverse and images with one or two matched keypoints put after the rest
(``index.queries.DIVERSE_SHARE`` = 0.3, ``index.queries.MIN_MATCHED`` = 3; measured as the
default, 2026-12-06, and turned off: the same answers at 1.06-1.18x the time);
*uncapped-rows*: the second look's word list takes every keypoint's more words, as before
2026-12-06 (``tasks.SECOND_LOOK_MAX_ROWS``, now 12,000 rows, its more words the nearest first);
*unrectified*: the corners a user marks looked at in the photo's own perspective, as before
2026-12-06 evening (``retrieval.features.RECTIFY_REGIONS``: rectified, the sheet seen square-on;
only searches with corners differ, so ``--variants``' true-corner rows are what it changes);
*closer-unrectified*: the closer look at a small match's region in the photo's own perspective, as
before 2026-12-06 night (``tasks.RECTIFY_CLOSER_LOOK``: warped to the reference's proportions);
*no-strip-check*: a match whose inliers lie on a strip but for a few chance ones confirmed by its
spread along their principal axes, as before 2026-12-06 night (``retrieval.confirm.STRIP_CHECK``);
*no-edge-check*: a match whose inliers keep to a band along an edge of the reference (a colour chart,
a ruler) confirmed by its inliers and spread, as before 2026-12-07 (``retrieval.confirm.EDGE_CHECK``);
*unbudgeted*: the second look's more words and the tilted look's words read whatever postings they
have (``tasks.LATER_LOOK_POSTINGS`` None: as the search is again since 2026-12-07 evening; it was 6
million each, the rarest words first, for that day); *budgeted*: each reads at most 6 million
postings, the rarest words first (an index of 10,035 images does not reach it: compare with
``--derived``); *region-only*: a search with corners whose region confirms nothing answers with the
region's hits, as before 2026-12-07 (``tasks.WHOLE_PHOTO_AFTER_REGION``: now the whole photo is
searched next; the *true corners* rows of ``--variants`` compare them); *common-words*: the
postings of words that more than a tenth of the images hold are not read (``index.queries.COMMON_WORDS``
= 0.1; off in the search as it is: compare with ``--dressed``, where the footer every distractor
then carries makes such words); *control*: no switch at
all, so trial and now differ only in running first and second (what the order alone does: the
workers' caches of reference features are warmer for the second)."""
TRIAL = TRIALS["untilted"]


def _current(values: dict[str, Any]) -> dict[str, Any]:
    import importlib

    out = {}
    for name in values:
        module, attr = name.rsplit(".", 1)
        out[name] = getattr(importlib.import_module("papyrus_widgets." + module), attr)
    return out


def _switch(engine: Any, values: dict[str, Any]) -> None:
    """Set ``papyrus_widgets`` module switches (``module.NAME``: value) on every worker (and here)."""

    def apply(values: dict[str, Any] = values) -> None:
        import importlib

        for name, value in values.items():
            module, attr = name.rsplit(".", 1)
            setattr(importlib.import_module("papyrus_widgets." + module), attr, value)

    engine.client.run(apply)
    apply()
    assert _current(values) == values


FRAGMENTS = C.SHARED_DATA / "fragments"
"""PapyrusViz: fragments photographed in colour (``colour/``) and again in infrared (``infrared/``)."""
CROSS_CAPTURE_SCENES = 3
"""Scenes per infrared photograph in figure 0e (besides the file itself)."""


def _shows(name: str) -> set[str]:
    """The PapyrusViz fragments a file shows: ``0567a_r_IR.webp`` -> {0567a}; a join
    (``0812a_0812b_2275_r_CL.jpeg``) -> each of its fragments."""
    return set(Path(name).stem.split("_r_")[0].split("_"))


def _infrared(name: str) -> bool:
    return Path(name).stem.endswith("_IR")


def cross_capture_distractors(kept: int) -> tuple[int, Any]:
    """(n, keep): the first ``n`` distractors of which ``keep`` accepts ``kept``: those not cut from
    an infrared photograph (``fragments/infrared``, the infrared joins), which would show the
    queried photographs themselves."""
    from papyrus_widgets.evaluation import distractor_source

    sources = distractor_sources()
    infrared = {k for k, p in enumerate(sources) if _infrared(p.name)}

    def keep(i: int) -> bool:
        return distractor_source(i, len(sources), SEED) not in infrared

    n = count = 0
    while count < kept:
        count += keep(n)
        n += 1
    return n, keep


def _colour_refs(colour: list[Path], infrared: Path) -> set[str]:
    """The index keys of the colour photographs among ``colour`` that show the fragment of ``infrared``."""
    from papyrus_widgets.metadata import record_for_image

    (fragment,) = _shows(infrared.name)
    return {record_for_image(p, {}).key for p in colour if fragment in _shows(p.name)}


def _cross_capture_queries(colour: list[Path], around: list[Any], per_photo: int) -> list[tuple[Path, str, bytes, Any]]:
    """Figure 0e's queries: ``(infrared photograph, kind, photo bytes, right)`` for each infrared
    photograph as the file itself and in ``per_photo`` scenes among ``around``; ``right(key)``:
    whether an index key shows its fragment in colour (a reference among ``colour``, or a
    distractor cut from its colour photograph or from a colour join that holds it)."""
    from papyrus_widgets import scenes
    from papyrus_widgets.evaluation import cut_out, distractor_source

    sources = distractor_sources()
    out: list[tuple[Path, str, bytes, Any]] = []
    for i, path in enumerate(sorted((FRAGMENTS / "infrared").glob("*.webp"))):
        (fragment,) = _shows(path.name)
        refs = _colour_refs(colour, path)
        shown = {k for k, p in enumerate(sources) if not _infrared(p.name) and fragment in _shows(p.name)}

        def right(key: str, refs: set[str] = refs, shown: set[int] = shown) -> bool:
            if key.startswith("distractor:"):
                return distractor_source(int(key.split(":")[1]), len(sources), SEED) in shown
            return key in refs

        target = cut_out(path)
        out.append((path, "file", path.read_bytes(), right))
        for j in range(per_photo):
            scene = scenes.make_scene(target, around, np.random.default_rng([SEED + 900, i, j]))
            out.append((path, scene.kind, scenes.encode(scene), right))
    return out


FURNITURE_SIDES = ("1203_C1_11R.0.jpg", "1203_C1_11V.0.jpg")
"""Figure 0f's two scans: the recto and the verso of P.Mich. 1203 C1 11, one colour chart and ruler beside each."""
FURNITURE_SCENES = 40
"""Figure 0f's photos of each side."""


def furniture(per_side: int) -> dict[str, Any]:
    """Figure 0f (``--furniture``, see the module's text): whether photos of either Michigan side
    confirm their own scan and the other side's, with ``confirm.EDGE_CHECK`` on and off (the check
    reads the match only: both arms judge the same matches)."""
    import importlib

    from papyrus_widgets import imaging, scenes, tasks
    from papyrus_widgets.retrieval import describe_reference, match
    from papyrus_widgets.retrieval.confirm import QueryIndex

    # the module: the package exports a function of the same name
    confirm = importlib.import_module("papyrus_widgets.retrieval.confirm")

    refs, targets = {}, []
    for name in FURNITURE_SIDES:
        data = (C.MORE / "michigan" / name).read_bytes()
        stored = imaging.decode_image(data, max_side=tasks.INGEST_SIDE, name=name)  # as ingest describes it
        refs[name] = describe_reference(stored, size=stored.info["original_size"])
        targets.append((name, imaging.decode_image(data, max_side=1600, name=name)))
    around = [imaging.decode_image(p.read_bytes(), max_side=700, name=p.name) for p in C.reference_images()[:12]]
    rows, pairs = [], []
    t0 = time.perf_counter()
    for name, scene in scenes.make_scenes(targets, around, per_side, SEED + 700):
        query = QueryIndex(tasks._query_features(scene.image, None))
        other_name = FURNITURE_SIDES[1 - FURNITURE_SIDES.index(name)]
        own, other = match(query, refs[name]), match(query, refs[other_name])
        pairs.append((own, other))
        rows.append({"name": name, "kind": scene.kind, "fraction": round(scene.target_fraction, 3),
                     "own_inliers": own.inliers, "own_edge_depth": own.edge_depth,
                     "other_inliers": other.inliers, "other_edge_depth": other.edge_depth,
                     "other_spread": other.spread, "other_narrowest": other.narrowest})  # fmt: skip
    seconds = time.perf_counter() - t0
    arms: dict[str, Any] = {}
    was = confirm.EDGE_CHECK
    try:
        for arm, on in (("now", True), ("before", False)):
            confirm.EDGE_CHECK = on
            arms[arm] = {
                "own_confirmed": float(np.mean([confirm.is_confirmed(o) for o, _ in pairs])),
                "other_confirmed": float(np.mean([confirm.is_confirmed(x) for _, x in pairs])),
                "other_near_miss": float(np.mean([confirm.is_near_miss(x) for _, x in pairs])),
            }
            for row, (o, x) in zip(rows, pairs):
                row[f"own_confirmed_{arm}"], row[f"other_confirmed_{arm}"] = o.confirmed, x.confirmed
    finally:
        confirm.EDGE_CHECK = was
    charted = [x for _, x in pairs if x.inliers >= confirm.CONFIRM_INLIERS]
    out = {
        "name": NAME + "-furniture",
        "photos": len(rows),
        "seed": SEED + 700,
        "arms": arms,
        "other_inliers": C.summary([x.inliers for _, x in pairs]),
        "other_with_confirm_inliers": len(charted),
        "other_edge_depth_max": max((x.edge_depth or 0.0 for x in charted), default=None),
        "own_edge_depth_min": min((o.edge_depth or 0.0 for o, _ in pairs if o.confirmed), default=None),
        "seconds_per_photo": seconds / max(1, len(rows)),
        "rows": rows,
    }
    shown = ("own_confirmed", "other_confirmed", "other_near_miss")
    table = [[arm, *(f"{a[k]:.3f}" for k in shown)] for arm, a in arms.items()]
    print(C.table(table, ["edge check", "own confirmed", "other side confirmed", "near miss"]))
    fewer = C.ratio(arms["now"]["other_confirmed"], arms["before"]["other_confirmed"])
    print(f"other side: {len(charted)} of {len(rows)} photos with {confirm.CONFIRM_INLIERS}+ inliers (the chart), "
          f"deepest {out['other_edge_depth_max']}; own confirmed: shallowest {out['own_edge_depth_min']}; "
          f"other side confirmed now / before: {fewer}", flush=True)  # fmt: skip
    return out


def cross_capture(engine: Any, settings: Any, root: Path, around: list[Any], per_photo: int) -> dict[str, Any]:
    """Figure 0e: another photograph of the same papyrus, real. The colour photographs of the
    PapyrusViz fragments are ingested as references; each infrared photograph of the same fragments
    is searched with no corners, as the file itself and in ``per_photo`` scenes (``around``: other
    papyri, none of the fragments). A hit is right when it shows the fragment in colour: its
    reference, or a distractor cut from its colour photograph or from a colour join that holds it."""
    from papyrus_widgets import index

    colour = sorted((FRAGMENTS / "colour").glob("*.webp"))
    report = engine.ingest(C.link_folder(colour, root / "colour"), progress=False)
    print(f"colour photographs of the fragments: {report}", flush=True)
    with index.connect(settings.database_url) as conn:
        total = index.image_count(conn)
    rows: list[dict[str, Any]] = []
    for path, kind, data, right in _cross_capture_queries(colour, around, per_photo):
        refs = _colour_refs(colour, path)
        first = engine.search(data, k=100, verify=False)
        t = time.perf_counter()
        res = engine.search(data, k=5)
        latency = time.perf_counter() - t
        base = baseline_today(engine, settings, data, field="key")
        top = res.hits[0] if res.hits else None
        row = {
            "name": path.name,
            "kind": kind,
            "first_rank": next((k + 1 for k, h in enumerate(first.hits) if right(h.key)), None),
            "rank": next((h.rank for h in res.hits if right(h.key)), None),
            "top_confirmed": bool(top and top.confirmed and right(top.key)),
            "top_is_reference": bool(top and top.key in refs),
            "inliers": top.inliers if top else None,
            "latency": latency,
            "baseline_rank": next((k + 1 for k, key in enumerate(base) if key and right(key)), None),
        }
        rows.append(row)
        print(f"  {kind:<8} {path.name:<18} first={row['first_rank']} rank={row['rank']} "
              f"conf={row['top_confirmed']} baseline={row['baseline_rank']} {latency:.2f}s",
              flush=True)  # fmt: skip

    def figures(part: list[dict[str, Any]]) -> dict[str, Any]:
        def at(key: str, k: int) -> float:
            return float(np.mean([r[key] is not None and r[key] <= k for r in part]))

        return {
            "queries": len(part),
            "first_stage": {f"recall@{k}": at("first_rank", k) for k in (10, 50, 100)},
            "top1": at("rank", 1),
            "top5": at("rank", 5),
            "confirmed": float(np.mean([r["top_confirmed"] for r in part])),
            "baseline_top1": at("baseline_rank", 1),
            "latency": C.summary([r["latency"] for r in part]),
        }

    out = {
        "name": NAME + "-crosscapture",
        "gallery": {"images": total, "references": report.added},
        "files": figures([r for r in rows if r["kind"] == "file"]),
        "scenes": figures([r for r in rows if r["kind"] != "file"]),
        "rows": rows,
    }
    for part in ("files", "scenes"):
        f = out[part]
        print(f"{part}: top-1 {f['top1']:.3f} (baseline {f['baseline_top1']:.3f}), top-5 {f['top5']:.3f}, "
              f"confirmed {f['confirmed']:.3f}, first-stage recall@50 {f['first_stage']['recall@50']:.3f}, "
              f"p50 {f['latency']['p50']:.2f} s", flush=True)  # fmt: skip
    return out


def second_look_rank(settings: Any, data: bytes, seen: set[str], right: Any) -> tuple[int | None, dict[str, float]]:
    """Where the second look's list (``tasks.second_look_list``: the photo's words and more words,
    ``tasks.second_look_rows``, over ``shortlist.SECOND_LOOK_WINDOWS``, the images the first look
    tried, ``seen`` by object key, left out) puts the first reference ``right(key)`` accepts; None
    when not among them. All the photo's keypoints (the search leaves out those of papyri it
    confirmed: when it confirmed none, the same).

    Also the seconds of the two word lists alone, warm (each made twice, alternated, the second
    timed): the first pass's (``tasks.first_pass_list``, 100 long, as ``tasks.search_task`` asks for
    it without an embedding: the postings read, the pairs kept), the second look's scored from the
    first pass's pairs and the more words' postings (as a search does when both run in one
    process, ``tasks.PAIRS_CACHE``) and
    the second look's with its postings read again (when it runs in another worker process)."""
    from papyrus_widgets import imaging, index, tasks
    from papyrus_widgets.retrieval.features import QUERY_MAX_KEYPOINTS

    img = imaging.decode_image(data, max_side=tasks.PHOTO_MAX_SIDE)
    features = tasks._query_features(img, None)
    words, signatures = tasks.worker_vocabulary(settings).words_and_signatures(features.descriptors)
    prepared = tasks.PreparedQuery(np.zeros(0), features, words, features.size, None, signatures)
    url = settings.database_url
    first_rows = tasks.query_rows(settings, prepared, QUERY_MAX_KEYPOINTS)  # as search_task asks

    def first_pass() -> None:
        with index.pooled_connection(url) as conn:
            tasks.first_pass_list(conn, first_rows[0], first_rows[2], features.size, first_rows[1], 0, url=url)

    def second_pass(kept: bool) -> list[Any]:  # the first pass's pairs and the rest's read, or all read again
        words, signatures, points, pairs = tasks.second_look_rows(settings, url, prepared, None)
        assert pairs is not None or not kept, "first_pass_list keeps its pairs under the database's url"
        return tasks.second_look_list(
            url, words, points, features.size, signatures, seen, pairs=pairs if kept else None
        )

    seconds: dict[str, float] = {}
    fresh: list[Any] = []
    for _ in range(2):
        t = time.perf_counter()
        first_pass()
        seconds["first_statement"] = time.perf_counter() - t
        t = time.perf_counter()
        fresh = second_pass(True)
        seconds["second_statement"] = time.perf_counter() - t
        t = time.perf_counter()
        again = second_pass(False)
        seconds["second_statement_reread"] = time.perf_counter() - t
        seconds["reread_same_images"] = float({c.row["key"] for c in again} == {c.row["key"] for c in fresh})
    return next((k + 1 for k, c in enumerate(fresh) if right(c.row["key"])), None), seconds


def cross_capture_at_scale(
    engine: Any, settings: Any, root: Path, around: list[Any], per_photo: int, n_derived: int
) -> dict[str, Any]:
    """Figure 0e's first stage as the collection grows: figure 0e's queries searched with
    ``verify=False, k=100`` in its index, then again after ``n_derived`` derived items (none from a
    crop of a fragment's photograph, colour or infrared, so that none shows the fragment) are added."""
    from papyrus_widgets import index
    from papyrus_widgets.evaluation import distractor_source
    from papyrus_widgets.retrieval.confirm import CONFIRM_MAX

    colour = sorted((FRAGMENTS / "colour").glob("*.webp"))
    report = engine.ingest(C.link_folder(colour, root / "colour"), progress=False)
    print(f"colour photographs of the fragments: {report}", flush=True)
    queries = _cross_capture_queries(colour, around, per_photo)
    sources = distractor_sources()
    fragments = {k for k, p in enumerate(sources) if FRAGMENTS in p.parents}

    def measure() -> tuple[int, list[dict[str, Any]]]:
        with index.connect(settings.database_url) as conn:
            total = index.image_count(conn)
        engine.search(queries[0][2], k=100, verify=False)  # warm: the index just grew
        rows = []
        for path, kind, data, right in queries:
            t = time.perf_counter()
            first = engine.search(data, k=100, verify=False)
            seconds = time.perf_counter() - t
            rank = next((k + 1 for k, h in enumerate(first.hits) if right(h.key)), None)
            tried = {str(h.image_key) for h in first.hits[:CONFIRM_MAX]}
            second, statements = second_look_rank(settings, data, tried, right)
            either = (rank or 999) <= CONFIRM_MAX or second is not None
            rows.append(
                {
                    "name": path.name,
                    "kind": kind,
                    "first_rank": rank,
                    "second_look_rank": second,
                    "either_look": either,
                    "latency": seconds,
                    **statements,
                }
            )
            print(
                f"  {total:>7} {kind:<8} {path.name:<18} first={rank} second look={second} {seconds:.2f}s"
                f" (lists {statements['first_statement']:.2f} / {statements['second_statement']:.2f}"
                f" / reread {statements['second_statement_reread']:.2f} s)",
                flush=True,
            )
        return total, rows

    def figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "queries": len(rows),
            "first_stage": {
                f"recall@{k}": float(np.mean([r["first_rank"] is not None and r["first_rank"] <= k for r in rows]))
                for k in (10, 50, 100)
            },
            "either_look": float(np.mean([r["either_look"] for r in rows])),
            "latency": C.summary([r["latency"] for r in rows]),
            "first_statement": C.summary([r["first_statement"] for r in rows]),
            "second_statement": C.summary([r["second_statement"] for r in rows]),
            "second_statement_reread": C.summary([r["second_statement_reread"] for r in rows]),
        }

    def no_fragment(i: int) -> bool:
        return distractor_source(i, len(sources), SEED) not in fragments

    sizes = []
    for n in (0, n_derived):
        build_s = add_derived(settings, n, no_fragment) if n else 0.0
        total, rows = measure()
        sizes.append(
            {
                "images": total,
                "derived": n,
                "build_seconds": build_s,
                "files": figures([r for r in rows if r["kind"] == "file"]),
                "scenes": figures([r for r in rows if r["kind"] != "file"]),
                "rows": rows,
            }
        )
    return {
        "name": NAME + "-crosscapture-100k",
        "sizes": sizes,
        "parents": _cached_crops(settings, no_fragment),
        "load_average": C.load_average(),
    }


def by_variant(
    engine: Any, papyri: Papyri, variants: list[str], total: int, trial: dict[str, Any] = TRIAL
) -> dict[str, Any]:
    """Photos outside the scenes' usual range (``scenes.VARIANTS``): for each, new scenes of every
    indexed and held-out papyrus, searched with no corners by the search as it is and with
    ``trial``'s switches (:data:`TRIALS`; default without the tilted look), the same photos, index and
    cluster, the two searches of each photo one right after the other (:func:`both_ways`); before
    them, each photo's first stage as it is (``verify=False``, k=100: recall@10/50/100, and each
    row's ``first_rank``), so that a miss says whether the first look's list held the papyrus; after
    them, each photo of an indexed papyrus searched once more with its true corners
    (:func:`corner_search`, a careful user who marks them), as it is and with ``trial``'s switches,
    one right after the other (``true_corners``, ``true_corners_trial``). The
    ``n``-th variant of the list (from 0) gets the photos of seed ``SEED + 500 + 10 n``: a variant's
    photos depend on its place in the list (``--variants lcd+shaky,lcd+steep`` and
    ``--variants lcd+steep,lcd+shaky`` search different photos); each entry records its seed."""
    now = _current(trial)
    out: dict[str, Any] = {"name": NAME + "-variants", "gallery": {"images": total}, "trial": trial, "variants": []}
    for n, variant in enumerate(variants):
        seed = SEED + 500 + 10 * n
        positives, negatives = papyri.photos(seed, variant=variant)
        entry: dict[str, Any] = {
            "variant": variant,
            "seed": seed,
            "queries": len(positives),
            "held_out_queries": len(negatives),
        }
        arms = {"now": now, "trial": trial}
        # where the first stage (as it is) puts each photo's papyrus: a miss says whether a look could list it
        first_ranks = [rank_of(engine.search(q.data, k=100, verify=False).hits, q.truth) for q in positives]
        entry["first_stage"] = {
            f"recall@{k}": float(np.mean([r is not None and r <= k for r in first_ranks])) for k in (10, 50, 100)
        }
        print(f"{variant}: first stage {entry['first_stage']}", flush=True)
        rows_by, held_by, compared = _compared(engine, arms, positives, negatives, no_corner_search)
        for rows in rows_by.values():
            for row, first_rank in zip(rows, first_ranks):
                row["first_rank"] = first_rank
        for label in arms:
            rows, held_rows = rows_by[label], held_by[label]
            entry[label] = {
                "top1": float(np.mean([r["rank"] == 1 for r in rows])),
                "top5": float(np.mean([r["rank"] is not None and r["rank"] <= 5 for r in rows])),
                "true_match_confirmed": float(np.mean([r["rank"] == 1 and r["confirmed"] for r in rows])),
                "held_out_confirmed": float(np.mean([r["confirmed"] for r in held_rows])) if held_rows else None,
                "latency": C.summary([r["latency"] for r in rows]),
                "held_out_latency": C.summary([r["latency"] for r in held_rows]) if held_rows else None,
                "rows": rows,
                "held_out_rows": held_rows,
            }
            print(
                f"{variant} ({label}): top-1 {entry[label]['top1']:.3f}, top-5 {entry[label]['top5']:.3f}, "
                f"held-out confirmed {entry[label]['held_out_confirmed']}, p50 {entry[label]['latency']['p50']:.2f} s",
                flush=True,
            )
        entry.update(compared)
        print(f"{variant}: trial / now per photo {compared}")
        corner_by = both_ways(engine, arms, positives, lambda q: corner_search(engine, q))
        for label, key in (("now", "true_corners"), ("trial", "true_corners_trial")):
            corner_rows = corner_by[label]
            entry[key] = {
                "top1": float(np.mean([r["rank"] == 1 for r in corner_rows])),
                "top5": float(np.mean([r["rank"] is not None and r["rank"] <= 5 for r in corner_rows])),
                "true_match_confirmed": float(np.mean([r["rank"] == 1 and r["confirmed"] for r in corner_rows])),
                "latency": C.summary([r["latency"] for r in corner_rows]),
                "rows": corner_rows,
            }
            print(
                f"{variant} (true corners, {label}): top-1 {entry[key]['top1']:.3f}, top-5 "
                f"{entry[key]['top5']:.3f}, p50 {entry[key]['latency']['p50']:.2f} s",
                flush=True,
            )
        entry["true_corners_per_photo"] = per_photo_ratios(corner_by["now"], corner_by["trial"])
        now_top1 = entry["now"]["top1"]
        entry["ratio_top1_trial_vs_now"] = C.ratio(entry["trial"]["top1"], now_top1) if now_top1 else None
        out["variants"].append(entry)
    out["load_average"] = C.load_average()
    return out


def main() -> None:
    args = C.parse_args(
        __doc__.splitlines()[0],
        lambda p: (
            p.add_argument(
                "--distractors", type=int, default=None, help="distractor crops (default 10000; --quick 1000)"
            ),
            p.add_argument("--per-ref", type=int, default=None, help="scenes per papyrus (default 2; --quick 1)"),
            p.add_argument(
                "--derived",
                type=int,
                default=0,
                help="add N derived items with stored features; the no-corner search at both sizes (100k figure), "
                "or with --fractions / --variants those at the larger size",
            ),
            p.add_argument(
                "--fractions",
                default="",
                help="comma-separated shares of the frame (e.g. 0.05,0.1,0.2): the no-corner search at each",
            ),
            p.add_argument(
                "--variants",
                default="",
                help="comma-separated scenes.VARIANTS, or several joined by + (e.g. closeup,steep,lcd+shaky): "
                "as it is and with --trial; the n-th of the list gets the photos of seed SEED+500+10n",
            ),
            p.add_argument(
                "--cross-capture",
                action="store_true",
                help="figure 0e: infrared photographs of fragments searched against their colour photographs",
            ),
            p.add_argument(
                "--furniture",
                action="store_true",
                help="figure 0f: photos of the two Michigan sides, which share a colour chart, against both scans",
            ),
            p.add_argument(
                "--dressed",
                type=float,
                default=0.0,
                help="share of the distractors dressed as the library's scans: on white above a Heidelberg footer bar",
            ),
            p.add_argument(
                "--trial",
                choices=sorted(TRIALS),
                default=None,
                help="what --variants (default: untilted) and --fractions (default: nothing) compare with, same photos",
            ),
        ),
    )
    C.setup_environment()
    global DRESSED
    DRESSED = args.dressed
    if args.furniture:  # no services: features and matches only
        per_side = args.per_ref or (10 if args.quick else FURNITURE_SCENES)
        C.write_result(args.out, NAME + "-furniture", furniture(per_side))
        return
    n_distractors = args.distractors if args.distractors is not None else (1000 if args.quick else 10000)
    per_ref = args.per_ref or (1 if args.quick else 2)
    from papyrus_widgets import imaging, index
    from papyrus_widgets.api import get_engine
    from papyrus_widgets.evaluation import distinct_files, quad_iou

    indexed, held = split_references()
    with C.workspace(NAME) as ws:
        settings = ws.settings(workers=2)
        engine = get_engine(settings)
        rs = engine.resolved_settings()
        folder = C.link_folder(indexed, ws.root / "references")
        t0 = time.perf_counter()
        report = engine.ingest(folder, C.HGV_DIR, progress=False)
        ingest_s = time.perf_counter() - t0
        print(f"references: {report}", flush=True)
        keep = None
        kept = n_distractors
        if args.cross_capture:  # as many distractors, none cut from the infrared photographs queried
            n_distractors, keep = cross_capture_distractors(n_distractors)
        distractor_s, cached_chunks = add_distractors(engine, rs, n_distractors, keep)
        with index.connect(rs.database_url) as conn:
            total = index.image_count(conn)
        print(f"index: {total} images ({n_distractors} distractors) built in {distractor_s:.0f} s", flush=True)

        def decoded(paths: list[Path]) -> dict[str, Any]:
            return {p.name: imaging.decode_image(p.read_bytes(), max_side=1200, max_pixels=400_000_000) for p in paths}

        sources = decoded(C.more_images())
        ref_imgs = decoded(distinct_files(indexed))
        held_imgs = decoded(distinct_files(held))
        papyri = Papyri(indexed, held, {**ref_imgs, **sources}, held_imgs, per_ref)
        positives, negatives = papyri.photos(SEED)
        print(f"queries: {len(positives)} of indexed papyri, {len(negatives)} of held-out papyri", flush=True)
        if args.cross_capture and args.derived:
            engine.search(positives[0].data, k=5)  # warm: model, pools, vocabulary on the workers
            around = list(ref_imgs.values()) + list(sources.values())  # no fragment among them
            result = cross_capture_at_scale(engine, rs, ws.root, around, CROSS_CAPTURE_SCENES, args.derived)
            result["distractors"] = kept
            C.write_result(args.out, NAME + "-crosscapture-100k", result)
            return
        if args.derived and not (args.fractions or args.variants):
            trial = TRIALS[args.trial] if args.trial else None
            result = at_scale(engine, rs, positives, negatives, args.derived, trial)
            C.write_result(args.out, NAME + "-100k", result)
            return

        larger: dict[str, Any] = {}  # with --derived, --fractions and --variants search the larger index
        if args.derived:
            build_s = add_derived(rs, args.derived, store=engine.store)
            with index.connect(rs.database_url) as conn:
                total = index.image_count(conn)
            larger = {"derived": args.derived, "derived_build_seconds": build_s}
            print(f"index: {total} images after {args.derived} derived items, added in {build_s:.0f} s", flush=True)
        suffix = "-100k" if larger else ""
        engine.search(positives[0].data, k=5)  # warm: model, pools, vocabulary on the workers
        if args.cross_capture:
            around = list(ref_imgs.values()) + list(sources.values())  # no fragment among them
            result = cross_capture(engine, rs, ws.root, around, CROSS_CAPTURE_SCENES)
            C.write_result(args.out, NAME + "-crosscapture", result)
            return
        if args.fractions:
            shares = [float(f) for f in args.fractions.split(",") if f.strip()]
            result = by_fraction(engine, papyri, shares, total, TRIALS[args.trial] if args.trial else None)
            name = NAME + "-fractions" + suffix
            C.write_result(args.out, name, {**result, **larger, "name": name, "dressed": DRESSED})
        if args.variants:  # after --fractions too when both are given: one index for both
            chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
            result = by_variant(engine, papyri, chosen, total, TRIALS[args.trial] if args.trial else TRIAL)
            name = NAME + "-variants" + suffix
            C.write_result(args.out, name, {**result, **larger, "name": name, "dressed": DRESSED})
        if args.fractions or args.variants:
            return
        rows: list[dict[str, Any]] = []
        for q in positives:
            row: dict[str, Any] = {"name": q.name, "kind": q.kind, "fraction": round(q.fraction, 3)}
            first = engine.search(q.data, k=100, verify=False)
            row["first_rank"] = rank_of(first.hits, q.truth)
            res, row["latency"], row["stages"] = timed_search(engine, q.data, k=5)
            row["rank"] = rank_of(res.hits, q.truth)
            row["top_confirmed"] = bool(res.hits and res.hits[0].confirmed)
            region = res.region
            row["iou"] = quad_iou(region, q.corners) if region else 0.0
            if region:
                t = time.perf_counter()
                again = engine.search(q.data, k=5, corners=region)
                row["region_latency"] = time.perf_counter() - t
                row["region_rank"] = rank_of(again.hits, q.truth)
            else:
                row["region_rank"] = row["rank"]  # nothing found to refine: the user keeps the first answer
            t = time.perf_counter()
            exact = engine.search(q.data, k=5, corners=q.corners)
            row["corners_latency"] = time.perf_counter() - t
            row["corners_rank"] = rank_of(exact.hits, q.truth)
            base = baseline_today(engine, rs, q.data)
            row["baseline_rank"] = next((i + 1 for i, key in enumerate(base) if key == q.truth), None)
            rows.append(row)
            print(
                f"  {q.kind:<8} {q.fraction:.2f} {q.name:<26} first={row['first_rank']} rank={row['rank']} "
                f"conf={row['top_confirmed']} iou={row['iou']:.2f} region={row['region_rank']} "
                f"corners={row['corners_rank']} baseline={row['baseline_rank']} {row['latency']:.2f}s {row['stages']}",
                flush=True,
            )
        negative_rows = held_out_searches(engine, negatives)

    def at(key: str, k: int) -> float:
        return float(np.mean([r[key] is not None and r[key] <= k for r in rows]))

    result = {
        "name": NAME,
        "gallery": {
            "images": total,
            "distractors": n_distractors,
            "distractors_dressed_as_scans": DRESSED,
            "references": report.added,
            "held_out_papyri": HELD_OUT,
        },
        "queries": {"positives": len(positives), "negatives": len(negatives), "per_ref": per_ref},
        "first_stage": {f"recall@{k}": at("first_rank", k) for k in (10, 50, 100)},
        "no_corners": {
            "top1": at("rank", 1),
            "top5": at("rank", 5),
            "latency": C.summary([r["latency"] for r in rows]),
        },
        "region": {
            "iou>=0.85": float(np.mean([r["iou"] >= 0.85 for r in rows])),
            "iou_median": float(np.median([r["iou"] for r in rows])),
            "top1": at("region_rank", 1),
            "top5": at("region_rank", 5),
            "latency": C.summary([r["region_latency"] for r in rows if "region_latency" in r]),
        },
        "true_corners": {
            "top1": at("corners_rank", 1),
            "top5": at("corners_rank", 5),
            "latency": C.summary([r["corners_latency"] for r in rows]),
        },
        "confirm": {
            "true_match_confirmed": float(np.mean([r["rank"] == 1 and r["top_confirmed"] for r in rows])),
            "held_out_confirmed": float(np.mean([r["confirmed"] for r in negative_rows])) if negative_rows else None,
        },
        "baseline_today": {"top1": at("baseline_rank", 1), "top5": at("baseline_rank", 5)},
        "by_kind": {
            kind: {
                "n": sum(r["kind"] == kind for r in rows),
                "top1": float(np.mean([r["rank"] == 1 for r in rows if r["kind"] == kind])),
                "first_recall@50": float(
                    np.mean([r["first_rank"] is not None and r["first_rank"] <= 50 for r in rows if r["kind"] == kind])
                ),
            }
            for kind in sorted({r["kind"] for r in rows})
        },
        "build_seconds": {"references_ingest": ingest_s, "distractors": distractor_s},
        "distractor_chunks_from_cache": cached_chunks,
        "rows": rows,
        "negatives": negative_rows,
        "load_average": C.load_average(),
    }
    top1, base = result["no_corners"]["top1"], result["baseline_today"]["top1"]
    result["ratio_top1_vs_today"] = C.ratio(top1, base) if base else None
    print(
        C.table(
            [
                [
                    "first stage recall@10/50/100",
                    " / ".join(f"{result['first_stage'][f'recall@{k}']:.3f}" for k in (10, 50, 100)),
                ],
                ["no corners top-1 / top-5", f"{top1:.3f} / {result['no_corners']['top5']:.3f}"],
                ["found region top-1 / top-5", f"{result['region']['top1']:.3f} / {result['region']['top5']:.3f}"],
                [
                    "true corners top-1 / top-5",
                    f"{result['true_corners']['top1']:.3f} / {result['true_corners']['top5']:.3f}",
                ],
                ["today's pipeline top-1 / top-5", f"{base:.3f} / {result['baseline_today']['top5']:.3f}"],
                ["region IoU >= 0.85", f"{result['region']['iou>=0.85']:.3f}"],
                ["true matches confirmed", f"{result['confirm']['true_match_confirmed']:.3f}"],
                ["held-out papyri confirmed (false)", f"{result['confirm']['held_out_confirmed']}"],
                [
                    "latency p50 / p95 (s), no corners",
                    f"{result['no_corners']['latency']['p50']:.2f} / {result['no_corners']['latency']['p95']:.2f}",
                ],
            ],
            ["figure", f"{len(positives)} queries, {total} images"],
        )
    )
    C.write_result(args.out, NAME, result)


if __name__ == "__main__":
    main()
