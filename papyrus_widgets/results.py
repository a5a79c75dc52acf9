"""What a search and an ingest return: :class:`Hit` (one reference found, with its record and the
evidence), :class:`Results` (the hits of one search, with the verdict and the region found) and
:class:`IngestReport`, :class:`RewordReport`. Plain data with their displays (table, JSON, HTML); no services."""

from __future__ import annotations

import base64
import html
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Hit", "Results", "IngestReport", "RewordReport", "CONFIRMED_HTML"]


# --- one hit --------------------------------------------------------------------------------------


@dataclass
class Hit:
    """One search result: a reference image of a papyrus, with its catalogue record."""

    rank: int
    score: float
    key: str
    hgv_id: str | None
    tm_id: str | None
    inventory: str | None
    inventory_key: str | None
    collection: str | None
    title: str | None
    date_text: str | None
    date_from: int | None
    date_to: int | None
    place: str | None
    papyri_info_url: str | None
    image_urls: list[str] = field(default_factory=list)
    source_name: str | None = None
    image_key: str | None = None
    thumb_key: str | None = None
    thumbnail: bytes | None = field(default=None, repr=False)
    embedding_score: float | None = None
    """The cosine similarity of the embeddings (None: not known)."""
    words_score: float | None = None
    """The first stage's visual-word similarity (idf-weighted cosine; None: not in the word list)."""
    shortlist_score: float | None = None
    """The first stage's similarity this hit was ranked by (``words_score``, else ``embedding_score``)."""
    found_by: str | None = None
    """Which first-stage list proposed it: ``"words"``, ``"embedding"`` or ``"both"``."""
    # set by the verifying stage (None / empty / False when the search was not verified):
    confirmed: bool = False
    """The geometry agrees: the same papyrus is in the photo (:func:`~papyrus_widgets.retrieval.is_confirmed`).
    ``score`` ≥ 0.5 exactly for confirmed hits."""
    near_miss: bool = False
    """Not confirmed, but nearly: enough inliers spread over enough of the reference that the photo
    may well show this papyrus (:func:`~papyrus_widgets.retrieval.is_near_miss`); such hits come
    right after the confirmed ones."""
    inliers: int | None = None
    """Local-feature matches that agree on one homography: its RANSAC inliers, or, when more, the
    reference keypoints that agree with it beyond chance (``Verification.evidence``; ``matches``
    holds inlier pairs either way)."""
    whole_photo: bool = False
    """Confirmed in the whole photo, where the corners given confirmed nothing within their region:
    its outline covers most of that region (``tasks.WHOLE_PHOTO_AFTER_REGION``)."""
    region: list[list[float]] | None = None
    """Where this reference is in the photo: its corners (TL, TR, BR, BL) mapped by the
    homography, in the pixels of the photo as stored, clipped to the photo so that it can be passed
    back as ``corners`` (confirmed hits only)."""
    matches: list[list[float]] = field(default_factory=list, repr=False)
    """Up to 50 inlier pairs ``[qx, qy, rx, ry]``: query pixels (the photo as uploaded, after EXIF
    orientation) and reference pixels (the stored original)."""
    ef_search: int | None = None
    """The ``hnsw.ef_search`` the kNN query ran with, as the server reported it."""
    query_size: list[int] | None = None
    """``[width, height]`` of the query the ``matches`` refer to (the photo as stored, EXIF-upright)."""
    reference_size: list[int] | None = None
    """``[width, height]`` of the stored original of this reference that the ``matches`` refer to."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (everything but the thumbnail bytes and the query's ef_search)."""
        d = asdict(self)
        d.pop("thumbnail")
        d.pop("ef_search")
        return d



# --- results -----------------------------------------------------------------------------------


CONFIRMED_HTML = '<b style="color:#1a7f37">confirmed</b>'


@dataclass
class Results:
    """The hits of one search. ``frame()`` gives a DataFrame; in a notebook it shows as a grid."""

    query: str
    hits: list[Hit]
    elapsed: float = 0.0
    verified: bool | None = None
    """Whether the confirming stage ran (None: inferred from the hits)."""

    def __len__(self) -> int:
        return len(self.hits)

    @property
    def was_verified(self) -> bool:
        return bool(self.verified) if self.verified is not None else any(h.inliers is not None for h in self.hits)

    @property
    def confirmed(self) -> list[Hit]:
        """The hits whose geometry agrees with the photo (the same papyrus), best first."""
        return [h for h in self.hits if h.confirmed]

    @property
    def region(self) -> list[list[float]] | None:
        """Where the best confirmed papyrus is in the photo: four corners (TL, TR, BR, BL) in the
        photo's pixels (after EXIF orientation), to pass back as ``corners=`` — or None."""
        best = self.confirmed
        return best[0].region if best else None

    @property
    def verdict(self) -> str:
        """One line for a person: what was found, or that nothing in the collection was confirmed."""
        if not self.hits:
            return "no hits: the index is empty or the filters exclude everything."
        if not self.was_verified:
            return "not verified: the hits are ranked by similarity only (search with verify=True to confirm)."
        best = self.confirmed
        if not best:
            top = self.hits[0]
            if top.near_miss:
                return (
                    "no confirmed match in this collection; nearly: "
                    f"{top.inventory or top.key}, {top.inliers} keypoints agree on one geometry, "
                    "too few to confirm it (compare it with the photo)."
                )
            return (
                "no confirmed match in this collection: the hits below are only similar "
                "(no reference's keypoints agree with the photo on one geometry)."
            )
        top = best[0]
        more = f" (+{len(best) - 1} more confirmed)" if len(best) > 1 else ""
        where = (
            "; found in the whole photo, where it covers the corners marked (their region alone confirmed nothing)"
            if top.whole_photo
            else ""
        )
        return f"confirmed: {top.inventory or top.key}, {top.inliers} keypoints agree on one geometry{more}{where}."

    @property
    def ef_search(self) -> int | None:
        """The ``hnsw.ef_search`` the kNN query ran with (reported by the server), None without hits."""
        return self.hits[0].ef_search if self.hits else None

    def __getitem__(self, i: int) -> Hit:
        return self.hits[i]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.hits)

    @property
    def top(self) -> Hit | None:
        return self.hits[0] if self.hits else None

    def to_dicts(self) -> list[dict[str, Any]]:
        return [h.to_dict() for h in self.hits]

    def frame(self):  # type: ignore[no-untyped-def]
        """A pandas DataFrame, one row per hit."""
        import pandas as pd

        columns = [
            "rank", "score", "confirmed", "inliers", "inventory", "title", "date_text", "place", "hgv_id",
            "tm_id", "papyri_info_url", "key", "inventory_key", "source_name",
        ]  # fmt: skip
        return pd.DataFrame([{c: d[c] for c in columns} for d in self.to_dicts()], columns=columns)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(
            {
                "query": self.query,
                "elapsed": round(self.elapsed, 3),
                "ef_search": self.ef_search,
                "verdict": self.verdict,
                "region": self.region,
                "hits": self.to_dicts(),
            },
            ensure_ascii=False,
            **kwargs,
        )

    def _repr_html_(self) -> str:
        cards = []
        for h in self.hits:
            img = (
                f'<img src="data:image/jpeg;base64,{base64.b64encode(h.thumbnail).decode()}" '
                f'alt="{html.escape(h.inventory or h.key)}" style="max-width:160px;max-height:160px">'
                if h.thumbnail
                else '<div style="width:160px;height:120px;background:#eee"></div>'
            )
            link = (
                f'<a href="{html.escape(h.papyri_info_url)}" target="_blank" rel="noopener">papyri.info</a>'
                if h.papyri_info_url
                else ""
            )
            meta = " · ".join(html.escape(x) for x in (h.date_text, h.place) if x)
            cards.append(
                '<div style="display:inline-block;vertical-align:top;width:170px;margin:4px;font-size:12px">'
                f"{img}<div><b>#{h.rank}</b> {h.score:.3f} {CONFIRMED_HTML if h.confirmed else 'similar'}</div>"
                f"<div><b>{html.escape(h.inventory or h.key)}</b></div>"
                f"<div>{html.escape(h.title or '')}</div><div>{meta}</div><div>{link}</div></div>"
            )
        head = (
            f"<div><b>{len(self.hits)} hits</b> for {html.escape(self.query)} in {self.elapsed:.2f} s: "
            f"{html.escape(self.verdict)}</div>"
        )
        return f"<div class='papyrus-results'>{head}{''.join(cards)}</div>"

    def __repr__(self) -> str:
        lines = [f"Results for {self.query!r}: {len(self.hits)} hits in {self.elapsed:.2f} s; {self.verdict}"]
        for h in self.hits:
            mark = "confirmed" if h.confirmed else "similar  "
            lines.append(f"  {h.rank:>2}. {h.score:.3f} {mark} {h.inventory or h.key}  {h.title or ''}")
        return "\n".join(lines)


UNLINKED_SHOWN = 5
"""How many of :attr:`IngestReport.unlinked` its text names."""


@dataclass
class IngestReport:
    """What an ingest did: images added, skipped as already indexed, failed (with reasons)."""

    added: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    uploaded: int = 0
    """Scans the client sent to the workers through the object store (``ingest(upload=...)``)."""
    unlinked: list[tuple[str, str]] = field(default_factory=list)
    """Images whose names begin like ``<HGV id>_`` with an id the HGV metadata given does not know
    (path, that number): indexed under their file names, with no papyri.info link
    (:func:`papyrus_widgets.metadata.name_id_unknown`)."""

    @property
    def total(self) -> int:
        return self.added + self.skipped + len(self.failed)

    def __str__(self) -> str:
        text = f"{self.added} added, {self.skipped} skipped (already indexed), {len(self.failed)} failed"
        if self.seconds:
            text += f" in {self.seconds:.1f} s"
        if self.uploaded:
            text += f"; {self.uploaded} sent to the workers through the object store"
        text += "".join(f"\n  failed: {Path(p).name}: {why}" for p, why in self.failed)
        if self.unlinked:
            shown = ", ".join(f"{Path(p).name} ({i})" for p, i in self.unlinked[:UNLINKED_SHOWN])
            more = len(self.unlinked) - UNLINKED_SHOWN
            text += (
                f"\n  {len(self.unlinked)} name(s) begin with a number the HGV metadata does not know, so"
                f" they are indexed under their file names with no papyri.info link: {shown}"
                + (f" and {more} more" if more > 0 else "")
            )
        return text


@dataclass
class RewordReport:
    """What ``papyrus db rewords`` (:meth:`papyrus_widgets.Engine.reword`) did: the visual words of
    ``rewritten`` of the ``images`` it took up made again from the features ``params`` (``current``
    more were made from those already); ``failed`` (object key of the original, why) kept theirs."""

    images: int = 0
    current: int = 0
    rewritten: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    params: str = ""
    seconds: float = 0.0
    compacted: float | None = None
    """Seconds the postings' index took to rebuild afterwards (None: not rebuilt)."""
    note: str = ""
    """Why it was not rebuilt, when it could not be."""

    def __str__(self) -> str:
        text = (
            f"visual words of {self.rewritten} of {self.images} images made again from features {self.params}, "
            f"{len(self.failed)} failed in {self.seconds:.1f} s"
        )
        if self.current:
            text += f" ({self.current} more already made from them)"
        text += "".join(f"\n  failed: {key}: {why}" for key, why in self.failed)
        if self.failed:
            text += "\n  their words stay as they were: run papyrus db rewords again once these are mended"
        if self.compacted is not None:
            text += f"\nword postings index rebuilt in {self.compacted:.1f} s"
        if self.note:
            text += f"\n{self.note}"
        return text
