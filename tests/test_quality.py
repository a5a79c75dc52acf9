"""Quality gate: retrieval from photos that look like real use must not get worse.

An index of its own (real services: embedded PostgreSQL + pgvector, local object store, the
session's LocalCluster): 32 Heidelberg papyri ingested with ``Engine.ingest``, 8 held out, and
150 distractor crops of other real papyrus photographs (``more/``) ingested the same way, and the
colour photographs of the 11 PapyrusViz fragments (whose infrared photographs are queried). The
model is the seeded, untrained network of the session (the demo's fallback), so what is gated is
what does not depend on a trained embedding: the visual-word first stage, the confirming stage and
the region found. The queries are ``scenes`` photos (screen, desk, light box; the papyrus at
10-40 % of the frame), never the training generator's.

Floors (measured when this gate was written: 12/12 top-1 at 0.1 s … see benchmarks/results.md for
the full figure at 10,000 images): top-1 with no corners ≥ 11/12, every top-1 confirmed, the region
found overlapping the truth (IoU ≥ 0.85) for ≥ 10/12, and no held-out papyrus confirmed; real
infrared photographs of fragments find their colour photographs, confirmed, ≥ 8/10 as files and
≥ 8/10 in scenes; photos of the papyrus itself, not its scan (variant *bare*), ≥ 7/8 found and
confirmed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import HGV_DIR, REFERENCES, SHARED_DATA

pytestmark = pytest.mark.slow

HELD_OUT = 8
SEED = 11
FRAGMENTS = SHARED_DATA / "fragments"  # PapyrusViz: each fragment photographed in colour and in infrared


def _split() -> tuple[list[Path], list[Path]]:
    from papyrus_widgets.evaluation import held_out_split

    return held_out_split(sorted(p for p in REFERENCES.iterdir() if p.suffix == ".jpg"), HELD_OUT, SEED)


def _distinct(paths: list[Path]) -> list[Path]:
    from papyrus_widgets.evaluation import distinct_files

    return distinct_files(paths)


@pytest.fixture(scope="module")
def gate(tmp_path_factory, model_dir):
    from papyrus_widgets import imaging
    from papyrus_widgets.api import Engine
    from papyrus_widgets.config import Settings
    from papyrus_widgets.evaluation import distractor_crop

    root = tmp_path_factory.mktemp("quality")
    indexed, held = _split()
    refs = root / "references"
    refs.mkdir()
    for p in indexed:
        (refs / p.name).symlink_to(p)
    sources = [
        imaging.decode_image(p.read_bytes(), max_side=2000, max_pixels=400_000_000)
        for p in sorted((SHARED_DATA / "more").rglob("*.jpg"))
    ]
    distractors = root / "distractors"
    distractors.mkdir()
    for i in range(150):
        distractor_crop(sources, i, SEED, max_side=800).save(distractors / f"distractor_{i:04d}.jpg", quality=90)
    engine = Engine(Settings.from_env(env={}, data_dir=root / "data", model=str(model_dir), dask_workers=2))
    report = engine.ingest(refs, HGV_DIR, progress=False)
    assert not report.failed, report
    report = engine.ingest(distractors, progress=False)
    assert report.added == 150 and not report.failed, report
    colour = root / "colour"  # the fragments' colour photographs (test_another_photograph_…)
    colour.mkdir()
    for p in sorted((FRAGMENTS / "colour").glob("*.webp")):
        (colour / p.name).symlink_to(p)
    report = engine.ingest(colour, progress=False)
    assert report.added == 11 and not report.failed, report
    others = {p.name: imaging.decode_image(p.read_bytes(), max_side=1200) for p in _distinct(indexed)}
    others.update({f"more-{i}": img for i, img in enumerate(sources[:3])})
    held_others = {p.name: imaging.decode_image(p.read_bytes(), max_side=1200) for p in _distinct(held)}
    return engine, indexed, held, others, held_others


def test_photos_find_their_papyrus_without_corners(gate) -> None:
    from papyrus_widgets.evaluation import quad_iou, scene_queries

    engine, indexed, _, others, _ = gate
    targets = _distinct(indexed)[::3][:12]
    queries = scene_queries(targets, others, 1, SEED)
    assert {q.kind for q in queries} == {"screen", "desk", "lightbox"}
    top1 = confirmed = overlaps = 0
    lines = []
    for q in queries:
        res = engine.search(q.data, k=5)
        top = res.top
        right = top is not None and top.inventory_key == q.truth
        top1 += right
        confirmed += right and top.confirmed
        iou = quad_iou(res.region, q.corners) if res.region else 0.0
        overlaps += iou >= 0.85
        lines.append(f"{q.kind} {q.fraction:.2f} {q.name}: top={top.inventory_key if top else None} iou={iou:.2f}")
    report = "\n".join(lines)
    assert top1 >= 11, report
    assert confirmed == top1, report
    assert overlaps >= 10, report


def test_a_photo_of_the_papyrus_itself_finds_it(gate) -> None:
    """A photo of the sheet itself, not of its scan (``scenes`` variant *bare*: no white ground, no
    footer bar, the papyri around it cut out alike), as in a museum's case or on a desk: the
    papyrus found and confirmed for at least 7 of 8 (measured when written: 8 of 8)."""
    from papyrus_widgets.evaluation import scene_queries

    engine, indexed, _, others, _ = gate
    queries = scene_queries(_distinct(indexed)[1::4][:8], others, 1, SEED + 3, variant="bare")
    found, lines = 0, []
    for q in queries:
        res = engine.search(q.data, k=5)
        top = res.top
        right = top is not None and top.inventory_key == q.truth and top.confirmed
        found += right
        lines.append(f"{q.kind} {q.fraction:.2f} {q.name}: {res.verdict}")
    assert found >= 7, "\n".join(lines)


def test_papyri_not_in_the_collection_are_not_confirmed(gate) -> None:
    from papyrus_widgets.evaluation import scene_queries

    engine, _, held, _, held_others = gate
    queries = scene_queries(_distinct(held)[:4], held_others, 1, SEED + 1)
    for q in queries:
        res = engine.search(q.data, k=5)
        assert not res.confirmed, f"{q.name} ({q.kind}) is not indexed but {res.verdict}"
        assert res.verdict.startswith("no confirmed match in this collection"), res.verdict
        assert all(h.score < 0.5 for h in res.hits), [h.score for h in res.hits]


def test_the_region_found_searches_again_as_corners(gate) -> None:
    """What the widget offers: the region of the first answer, passed back as corners, finds the
    same papyrus (in full detail: the corners' region is looked at at up to 3200 px)."""
    from papyrus_widgets.evaluation import scene_queries

    engine, indexed, _, others, _ = gate
    q = scene_queries(_distinct(indexed)[1:2], others, 1, SEED + 2)[0]
    first = engine.search(q.data, k=3)
    assert first.region is not None and first.top.inventory_key == q.truth, first.verdict
    again = engine.search(q.data, k=3, corners=first.region)
    assert again.top.inventory_key == q.truth and again.top.confirmed, again.verdict


def test_another_photograph_of_the_papyrus_finds_it(gate) -> None:
    """Real photographs, not generated ones: each PapyrusViz fragment was photographed in colour
    and again in infrared (another band, light, framing and resolution; the fibres pale, the ink
    dark). The colour photographs are in the collection; each infrared photograph, searched with no
    corners as the file itself and in a scene (screen, desk or light box), must find its fragment's
    colour photograph first, confirmed. Floors 8 of 10 each; measured when written 9 of 10 each
    (figure 0e: 9 of 10 files and 27 of 30 scenes among 10,046 images). The one it misses, 0567e:
    its infrared photograph shows almost nothing of what its colour one does (10 inliers at most).
    0567j's match lies on its two lines of text (126 inliers over 0.11 of its colour photograph's
    short side): confirmed by ``confirm.CONFIRM_BAND_INLIERS`` (before it: first, only similar)."""
    import numpy as np

    from papyrus_widgets import scenes
    from papyrus_widgets.evaluation import cut_out

    engine, _, _, others, _ = gate
    found = {"file": 0, "scene": 0}
    lines = []
    for i, path in enumerate(sorted((FRAGMENTS / "infrared").glob("*.webp"))):
        fragment = path.name.split("_r_")[0]
        target = cut_out(path)
        scene = scenes.make_scene(target, list(others.values()), np.random.default_rng([SEED, 5, i]))
        for kind, data in (("file", path.read_bytes()), ("scene", scenes.encode(scene))):
            top = engine.search(data, k=5).top
            right = top is not None and (top.source_name or "").split("_r_")[0] == fragment
            found[kind] += right and top.confirmed
            confirmed = bool(top and top.confirmed)
            lines.append(f"{kind} {path.name}: top={top.source_name if top else None} confirmed={confirmed}")
    print(f"\ninfrared photographs finding their colour ones, first and confirmed: {found} of 10 each")
    assert found["file"] >= 8 and found["scene"] >= 8, "\n".join(lines)
