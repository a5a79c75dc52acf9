"""Retrieval metrics, queries, the in-memory index, plots, and ``papyrus evaluate`` on the test
session's index."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from papyrus_widgets.errors import ImageError
from papyrus_widgets.evaluation import (
    MemoryIndex,
    QueryOutcome,
    average_precision,
    evaluate,
    inventory_of,
    load_queries,
    make_queries,
    query_strips,
    rank_histogram,
    summarise,
)
from papyrus_widgets.model import SiameseResNet18

from .conftest import REFERENCES
from .test_cli import run

# a small gallery: three papyri, one of them (p_g_213) under two HGV ids with the same bytes
GALLERY = ["19322_p_g_213.jpg", "19324_p_g_213.jpg", "19331_p_g_107.jpg", "21105_p_g_654.jpg"]


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gallery")
    for name in GALLERY:
        (folder / name).symlink_to(REFERENCES / name)
    return folder


@pytest.fixture(scope="module")
def model() -> SiameseResNet18:
    torch.manual_seed(1234)
    return SiameseResNet18().eval()


@pytest.fixture(scope="module")
def memory_index(model, gallery) -> MemoryIndex:
    return MemoryIndex.from_folder(model, gallery)


# --------------------------------------------------------------------------------------------- metrics


def test_average_precision_by_inventory() -> None:
    assert average_precision(["a", "b", "c"], "a", 1) == 1.0
    assert average_precision(["b", "a", "c"], "a", 1) == 0.5
    assert average_precision(["b", "c", "d"], "a", 1) == 0.0
    # two images of the same papyrus (two HGV ids): both count
    assert average_precision(["a", "a", "b"], "a", 2) == 1.0
    assert average_precision(["a", "b", "a"], "a", 2) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(["a", "b", "c"], "a", 2) == 0.5  # one of the two right images missed
    # the list can only hold k right answers
    assert average_precision(["b", "a"], "a", 5) == pytest.approx(0.5 / 2)
    # unknown count: divided by the right answers found
    assert average_precision(["b", "a", "a"], "a") == pytest.approx((1 / 2 + 2 / 3) / 2)


@dataclass
class _Hit:
    inventory_key: str
    score: float


class _FixedIndex:
    """Answers each query (named by its inventory) with a fixed ranked list."""

    relevant_counts = {"a": 1, "b": 1, "c": 2, "d": 1}

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, int, dict]] = []

    def search(self, image, k, **kwargs):
        self.calls.append((image, k, kwargs))
        return [_Hit(key, 1.0 - i / 10) for i, key in enumerate(self.answers[image][:k])]


def test_evaluate_counts_top1_top5_map_recall() -> None:
    answers = {
        "qa": ["a", "x", "y", "z", "w", "v"],  # rank 1
        "qb": ["x", "y", "b", "z", "w", "v"],  # rank 3
        "qc": ["x", "y", "z", "w", "v", "c", "c"],  # rank 6 (outside the top 5, inside k=7), both images
        "qd": ["x", "y", "z", "w", "v", "u", "t"],  # missed
    }
    index = _FixedIndex(answers)
    queries = [("qa", "a"), ("qb", "b"), ("qc", "c"), ("qd", "d")]
    res = evaluate(index, queries, k=7, verify=True, label="fixed")
    assert [c[1:] for c in index.calls] == [(7, {"verify": True})] * 4
    assert [o.rank for o in res.outcomes] == [1, 3, 6, None]
    assert res.top1 == 0.25 and res.top5 == 0.5 and res.recall_at_k == 0.75
    ap = [1.0, 1 / 3, (1 / 6 + 2 / 7) / 2, 0.0]
    assert res.mean_average_precision == pytest.approx(np.mean(ap))
    assert res.mean_rank == pytest.approx(10 / 3)
    m = res.metrics()
    assert m["queries"] == 4 and m["top1"] == 0.25 and m["recall@7"] == 0.75
    json.dumps(m)
    frame = res.frame()
    assert list(frame["rank"].fillna(0)) == [1, 3, 6, 0] and list(frame["inventory"]) == ["a", "b", "c", "d"]
    assert "fixed: 4 queries: top-1 0.250, top-5 0.500" in str(res)
    # no verify argument: none passed on (the engine's default applies)
    plain = _FixedIndex(answers)
    evaluate(plain, queries[:1], k=5)
    assert plain.calls == [("qa", 5, {})]
    with pytest.raises(ValueError, match="at least 5"):
        evaluate(index, queries, k=3)
    with pytest.raises(ValueError, match="no queries"):
        summarise([], 5)


# --------------------------------------------------------------------------------------------- queries


def test_distractor_source_names_the_photograph_a_crop_is_cut_from() -> None:
    """``distractor_source`` tells, without any image, which source ``distractor_crop`` cuts
    distractor ``i`` from (figure 0e leaves out the crops of the photographs it queries)."""
    from papyrus_widgets.evaluation import distractor_crop, distractor_source

    levels = [20, 80, 140, 200]  # grey levels that a colour shift of ±15 % keeps apart
    sources = [Image.new("RGB", (300 + 40 * k, 260), (v, v, v)) for k, v in enumerate(levels)]
    seen = set()
    for i in range(40):
        which = distractor_source(i, len(sources), seed=5)
        crop = np.asarray(distractor_crop(sources, i, seed=5), dtype=np.float32)
        assert int(np.argmin([abs(crop.mean() - v) for v in levels])) == which
        seen.add(which)
    assert seen == {0, 1, 2, 3}


def test_a_library_scans_footer_is_found_and_dresses_a_distractor() -> None:
    """``scan_footer`` finds the grey footer bar of every Heidelberg scan (logo, address and seal
    on it) and nothing on an image without one; ``dressed_as_scan`` puts a crop on white with that
    bar under it, scaled to its width, the crop's pixels unchanged."""
    from papyrus_widgets.evaluation import dressed_as_scan, scan_footer

    for path in sorted(REFERENCES.glob("*.jpg")):
        with Image.open(path) as scan:
            bar = scan_footer(scan)
            assert bar is not None and bar.width == scan.width, path.name
            assert 0.069 <= bar.height / scan.width <= 0.072, (path.name, bar.height)
            above = np.asarray(scan.convert("RGB"))[scan.height - bar.height - 1]
            assert np.median(np.abs(above.astype(int) - 206)) > 10, path.name  # the row above is not the bar
    papyrus = Image.new("RGB", (300, 200), (150, 110, 60))
    assert scan_footer(papyrus) is None
    grey = Image.new("RGB", (300, 200), (206, 206, 206))  # all bar: too high for a footer
    assert scan_footer(grey) is None

    footer = Image.new("RGB", (500, 35), (206, 206, 206))
    footer.paste((150, 20, 30), (470, 5, 495, 30))  # the seal, at its right end
    crop = Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8))
    out = dressed_as_scan(crop, [footer], i=3, seed=1)
    arr = np.asarray(out)
    bar = scan_footer(out)
    assert bar is not None and abs(bar.height - round(35 * out.width / 500)) <= 1
    assert np.asarray(bar)[:, -15].tolist()[10] == [150, 20, 30]  # the seal scaled along, still at the end
    body = arr[: out.height - bar.height]
    white = np.all(body == 255, axis=-1)
    ys, xs = np.nonzero(~white)
    assert (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == (200, 300)  # the crop, on white
    assert np.array_equal(body[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1], np.asarray(crop))
    assert 0.03 * 300 <= xs.min() <= 0.10 * 300 + 1 and 0.03 * 300 <= ys.min() <= 0.10 * 300 + 1
    assert np.array_equal(np.asarray(dressed_as_scan(crop, [footer], i=3, seed=1)), arr)  # seeded


def test_inventory_of_names_and_folders(tmp_path) -> None:
    assert inventory_of("19317_p_g_192_c.jpg") == "p_g_192_c"
    assert inventory_of("21090.xml_p_g_159.jpg") == "p_g_159"
    assert inventory_of(tmp_path / "r0" / "19331_p_g_107.jpg") == "p_g_107"
    assert inventory_of(tmp_path / "p_g_213" / "photo 1.jpg") == "p_g_213"  # labelled folder
    assert inventory_of(tmp_path / "holiday" / "IMG_0001.jpg") is None


def test_make_queries_deterministic_deduplicated_and_written(gallery, tmp_path) -> None:
    out = tmp_path / "queries"
    qs = make_queries(gallery, 2, seed=5, out_dir=out)
    # 19322 and 19324 are the same bytes: one set of queries for p_g_213
    assert sorted(k for _, k in qs) == sorted(["p_g_213", "p_g_107", "p_g_654"] * 2)
    assert all(isinstance(img, Image.Image) and max(img.size) <= 512 for img, _ in qs)
    again = make_queries(gallery, 2, seed=5)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for (a, _), (b, _) in zip(qs, again))
    other = make_queries(gallery, 1, seed=6)
    assert not np.array_equal(np.asarray(qs[0][0]), np.asarray(other[0][0]))
    assert {img.info["source"] for img, _ in qs} == {"19322_p_g_213.jpg", "19331_p_g_107.jpg", "21105_p_g_654.jpg"}
    # the written folder reads back with the same ground truth
    back = load_queries(out)
    assert len(back) == 6 and sorted(k for _, k in back) == sorted(k for _, k in qs)
    assert {p.parent.name for p, _ in back} == {"r0", "r1"}
    assert len(make_queries(gallery, 1, seed=5, limit=2)) == 2
    with pytest.raises(ImageError, match="no query images"):
        load_queries(_empty(tmp_path))


def _empty(tmp_path: Path) -> Path:
    folder = tmp_path / "nothing"
    folder.mkdir()
    Image.new("RGB", (32, 32)).save(folder / "holiday.jpg")
    return folder


# --------------------------------------------------------------------------------------------- in-memory index


def test_memory_index_finds_references_with_both_hgv_ids(memory_index, gallery) -> None:
    assert len(memory_index) == 4 and memory_index.relevant_counts["p_g_213"] == 2
    queries = [(p, k) for p, k in load_queries(gallery)]
    res = evaluate(memory_index, queries, k=5, label="self")
    # every reference finds itself first, and the p_g_213 pair fills ranks 1 and 2 (AP 1.0)
    assert res.top1 == 1.0 and res.mean_average_precision == pytest.approx(1.0)
    pair = [o for o in res.outcomes if o.inventory_key == "p_g_213"]
    assert all(o.hit_keys[:2] == ["p_g_213", "p_g_213"] for o in pair)
    hits = memory_index.search(gallery / "19331_p_g_107.jpg", k=3)
    assert [h.rank for h in hits] == [1, 2, 3] and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert hits[0].inliers is None and hits[0].thumbnail is not None


def test_memory_index_verification_reranks_with_evidence(memory_index, gallery) -> None:
    qs = make_queries(gallery, 1, seed=11)
    plain = evaluate(memory_index, qs, k=5, verify=False, label="embedding")
    checked = evaluate(memory_index, qs, k=5, verify=True, label="verified")
    assert checked.top1 == 1.0, [(o.inventory_key, o.hit_keys, o.hit_inliers) for o in checked.outcomes]
    assert checked.top1 >= plain.top1
    for o in checked.outcomes:
        assert o.hit_inliers[0] is not None and o.hit_inliers[0] > 10
    hits = memory_index.search(qs[0][0], k=4, verify=True)
    assert hits[0].matches and hits[0].embedding_score <= hits[0].score <= 1.0


# --------------------------------------------------------------------------------------------- plots


def _outcome(name: str, key: str, rank: int | None, k: int = 5) -> QueryOutcome:
    keys = ["x"] * k
    if rank is not None:
        keys[rank - 1] = key
    return QueryOutcome(name, key, rank, 1.0 / rank if rank else 0.0, keys, [0.9 - i / 10 for i in range(k)], 0.01,
                        thumbnail=Image.new("RGB", (40, 60), "tan"), hit_thumbnails=[None] * k, hit_inliers=[None] * k)


def test_rank_histogram_and_strips() -> None:
    import matplotlib

    matplotlib.use("Agg")
    a = summarise([_outcome("q1", "a", 1), _outcome("q2", "b", 3), _outcome("q3", "c", None)], 5, "A")
    b = summarise([_outcome("q1", "a", 2), _outcome("q2", "b", 2), _outcome("q3", "c", 1)], 5, "B")
    fig = rank_histogram([a, b])
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert len(heights) == 2 * 6  # ranks 1-5 and "miss", for each result
    assert heights[:6] == [1, 0, 1, 0, 0, 1] and heights[6:] == [1, 2, 0, 0, 0, 0]
    assert [t.get_text() for t in ax.get_xticklabels()][-1] == "miss"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["A", "B"]

    strips = query_strips(a, n=2, k=3)
    assert len(strips.axes) == 2 * 4
    first_row = strips.axes[:4]
    right = first_row[1]  # q1 found its papyrus first: framed green
    assert right.spines["top"].get_edgecolor()[:3] == pytest.approx((0x22 / 255, 0xAA / 255, 0x22 / 255))
    assert "#1" in right.get_title()
    failures = query_strips(a, which="failures", n=5, k=2)
    assert len(failures.axes) == 2 * 3  # q2 and q3
    buf = io.BytesIO()
    failures.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"
    with pytest.raises(ValueError):
        query_strips(a, which="best")


# --------------------------------------------------------------------------------------------- the engine and the CLI


def test_evaluate_the_engine_and_the_cli(indexed_engine, settings, tmp_path) -> None:
    folder = tmp_path / "photos"
    make_queries(REFERENCES, 1, seed=21, limit=3, out_dir=folder)
    queries = load_queries(folder)
    res = evaluate(indexed_engine, queries, k=5, label="engine")
    assert res.n == 3 and res.top1 == 1.0, [(o.inventory_key, o.hit_keys, o.hit_inliers) for o in res.outcomes]
    assert all(o.hit_inliers[0] and o.hit_inliers[0] > 10 for o in res.outcomes)  # verified by default

    proc = run(["evaluate", "--queries", str(folder), "-k", "5", "--compare", "--json"], settings)
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert set(payload["results"]) == {"embedding", "verified"}
    assert payload["results"]["verified"]["queries"] == 3 and payload["results"]["verified"]["top1"] == 1.0
    assert payload["results"]["embedding"]["top1"] <= payload["results"]["verified"]["top1"]

    proc = run(["evaluate", "--queries", str(REFERENCES), "--recaptures", "1", "-k", "3"], settings)
    assert proc.returncode != 0 and "at least 5" in proc.stderr and "Traceback" not in proc.stderr
    proc = run(["evaluate", "--queries", str(tmp_path / "none")], settings)
    assert proc.returncode == 1 and "no such folder of queries" in proc.stderr
