// The compare view: a result beside the query as searched, its catalogue details, and the evidence
// of geometric verification drawn on a canvas (the query photo and the large reference image, with
// the matching keypoints joined, and the region where a confirmed papyrus lies on the photo). To draw
// more on the evidence, add a layer: see EVIDENCE_LAYERS in evidence.js, or pass `layers` here.

import { blobUrl, h, retire, revoke, safeUrl, toBytes } from "./dom.js";
import { EVIDENCE_LAYERS, drawEvidenceScene, evidenceOf, evidenceScene } from "./evidence.js";
import { cardModel, searchVerified } from "./results.js";

export const EVIDENCE_MAX_HEIGHT = 380; // css px of the evidence drawing in the compare view

/**
 * The compare view of one view. `grid` is the results grid (createResults: thumbnailUrl,
 * select, focusCard). Returns {el, show, close, isOpen, index, onResults, updateQueryPreview,
 * onPreviewMessage, dispose}.
 */
export function createCompare({ model, id, nextRequest, grid, layers = EVIDENCE_LAYERS }) {
  let compareIndex = -1;
  let compareReturnFocus = null;
  let previewPending = null; // {request, key}
  let compareUrls = [];
  let queryPreviewUrl = null;
  const queryPreviewUrls = [];
  // The query photo the evidence is drawn on (asked for once per query_image_key).
  let queryPhoto = { key: "", img: null, request: null, message: "" };
  const queryPhotoUrls = [];
  let disposed = false;

  const compareQueryImg = h("img", { class: "papyrus-compare-img", "data-testid": "compare-query", alt: "The query as searched" });
  const compareResultImg = h("img", { class: "papyrus-compare-img", "data-testid": "compare-result", alt: "" });
  const compareQueryMissing = h("div", { class: "papyrus-thumb-missing", text: "no preview of the query" });
  const compareInfo = h("div", { class: "papyrus-compare-info", "data-testid": "compare-info" });
  const evidenceCanvas = h("canvas", {
    class: "papyrus-evidence-canvas",
    role: "img",
    "data-testid": "evidence-canvas",
    "aria-label": "The query photo (left) and the result (right); lines join keypoints that match; a dashed outline marks where a confirmed papyrus lies on the photo",
  });
  const evidenceCaption = h("figcaption", { "data-testid": "evidence-caption", "aria-live": "polite" });
  const evidenceBox = h("figure", { class: "papyrus-evidence", "data-testid": "evidence" }, [evidenceCanvas, evidenceCaption]);
  const compareTitle = h("h3", { id: `${id}-compare-title`, class: "papyrus-compare-title" });
  const compareClose = h("button", { class: "papyrus-button", type: "button", "data-testid": "compare-close", text: "Close" });
  const comparePrev = h("button", { class: "papyrus-button", type: "button", "aria-label": "Previous result", text: "‹" });
  const compareNext = h("button", { class: "papyrus-button", type: "button", "aria-label": "Next result", text: "›" });
  const compareBox = h(
    "section",
    { class: "papyrus-compare", "data-testid": "compare", role: "dialog", "aria-labelledby": compareTitle.id, hidden: true },
    [
      h("div", { class: "papyrus-compare-head" }, [
        compareTitle,
        h("div", { class: "papyrus-actions" }, [comparePrev, compareNext, compareClose]),
      ]),
      h("div", { class: "papyrus-compare-body" }, [
        h("figure", {}, [h("div", { class: "papyrus-compare-frame" }, [compareQueryImg, compareQueryMissing]), h("figcaption", { text: "Query (as searched)" })]),
        h("figure", {}, [h("div", { class: "papyrus-compare-frame" }, [compareResultImg]), h("figcaption", { "data-testid": "compare-result-caption", text: "Result" })]),
      ]),
      evidenceBox,
      compareInfo,
    ],
  );

  function setCompareQuery() {
    if (queryPreviewUrl) {
      compareQueryImg.src = queryPreviewUrl;
      compareQueryImg.hidden = false;
      compareQueryMissing.hidden = true;
    } else {
      compareQueryImg.removeAttribute("src");
      compareQueryImg.hidden = true;
      compareQueryMissing.hidden = false;
    }
  }

  function showCompare(index, focus = true) {
    const results = model.get("results") || [];
    const hit = results[index];
    if (!hit) return;
    if (compareIndex < 0) compareReturnFocus = document.activeElement;
    const sameHit = compareIndex === index && compareResultImg.dataset.key === (hit.image_key || "");
    compareIndex = index;
    const card = cardModel(hit, index, { verified: searchVerified(results) });
    const badge = card.badge ? ` — ${card.badge.text}` : "";
    compareTitle.textContent = `#${card.rank} ${card.inventory}${badge} — score ${card.similarity}`;
    setCompareQuery();
    if (!sameHit) {
      retire(compareUrls);
      compareResultImg.src = grid.thumbnailUrl(index, compareUrls) || "";
      compareResultImg.alt = `${card.inventory}`;
      compareResultImg.dataset.key = hit.image_key || "";
      compareResultImg.dataset.size = "thumbnail";
      if (hit.image_key) {
        const request = nextRequest();
        previewPending = { request, key: hit.image_key };
        model.send({ type: "preview", request, key: hit.image_key });
      }
    }
    const details = [card.title, card.meta, hit.collection ? `Collection: ${hit.collection}` : "", hit.hgv_id ? `HGV ${hit.hgv_id}` : "", hit.tm_id ? `TM ${hit.tm_id}` : ""]
      .filter(Boolean)
      .map((line) => h("div", { text: line }));
    if (card.url) {
      details.push(
        h("a", { class: "papyrus-link", href: card.url, target: "_blank", rel: "noopener noreferrer", text: "papyri.info record ↗" }),
      );
    }
    compareInfo.replaceChildren(...details);
    comparePrev.disabled = index <= 0;
    compareNext.disabled = index >= results.length - 1;
    compareBox.hidden = false;
    showEvidence(hit);
    grid.select(index);
    if (focus) compareClose.focus({ preventScroll: true });
  }

  function ensureQueryPhoto() {
    const key = model.get("query_image_key") || "";
    if (queryPhoto.key === key && (queryPhoto.img || queryPhoto.request || queryPhoto.message)) return;
    retire(queryPhotoUrls);
    queryPhoto = { key, img: null, request: null, message: "" };
    if (!key) {
      queryPhoto.message = "the query photo is not known for these results";
      return;
    }
    queryPhoto.request = nextRequest();
    model.send({ type: "preview", request: queryPhoto.request, key });
  }

  function showEvidence(hit) {
    const ev = evidenceOf(hit);
    evidenceCaption.textContent = ev.caption;
    evidenceBox.dataset.kind = ev.kind;
    evidenceCanvas.dataset.inliers = ev.inliers === null ? "" : String(ev.inliers);
    evidenceCanvas.dataset.lines = "0";
    evidenceCanvas.hidden = !ev.drawable;
    evidenceCanvas.dataset.state = ev.drawable ? "loading" : "none";
    if (ev.drawable) {
      ensureQueryPhoto();
      drawEvidence();
    }
  }

  function loaded(img) {
    return Boolean(img && img.complete && img.naturalWidth > 0);
  }

  function drawEvidence() {
    if (compareIndex < 0 || disposed) return;
    const hit = (model.get("results") || [])[compareIndex];
    const ev = evidenceOf(hit);
    if (!ev.drawable) return;
    if (queryPhoto.message && !queryPhoto.img) {
      evidenceCanvas.dataset.state = "failed";
      evidenceCaption.textContent = `${ev.caption} (Cannot draw them: ${queryPhoto.message})`;
      return;
    }
    if (!loaded(queryPhoto.img) || !loaded(compareResultImg)) return; // drawn again on load
    const width = Math.max(240, (evidenceBox.clientWidth || compareBox.clientWidth || 720) - 2);
    const scene = evidenceScene(hit, { query: queryPhoto.img, reference: compareResultImg }, width, EVIDENCE_MAX_HEIGHT);
    const { layout, lines } = scene;
    const dpr = window.devicePixelRatio || 1;
    evidenceCanvas.width = Math.round(layout.width * dpr);
    evidenceCanvas.height = Math.round(layout.height * dpr);
    evidenceCanvas.style.width = `${layout.width}px`;
    const ctx = evidenceCanvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    drawEvidenceScene(ctx, scene, layers);
    evidenceCanvas.dataset.lines = String(lines.length);
    evidenceCanvas.dataset.region = scene.region ? "true" : "false";
    evidenceCanvas.dataset.reference = compareResultImg.dataset.size || "";
    evidenceCanvas.dataset.state = "drawn";
  }

  function closeCompare(restoreFocus = true) {
    if (compareIndex < 0) return;
    const index = compareIndex;
    compareIndex = -1;
    previewPending = null;
    compareBox.hidden = true;
    retire(compareUrls);
    grid.select(-1);
    if (restoreFocus && !grid.focusCard(index)) {
      const target = compareReturnFocus;
      if (target && typeof target.focus === "function") target.focus({ preventScroll: true });
    }
  }

  /** A `preview` reply of the kernel: the query photo for the evidence, or a result's large image. */
  function onPreviewMessage(content, buffers) {
    const bytes = buffers && buffers.length ? toBytes(buffers[0]) : null;
    if (queryPhoto.request && queryPhoto.request === content.request) {
      queryPhoto.request = null;
      const url = bytes && bytes.byteLength ? blobUrl(bytes, queryPhotoUrls) : null;
      if (url) {
        const img = new Image();
        img.addEventListener("load", () => drawEvidence());
        img.src = url;
        queryPhoto.img = img;
      } else {
        queryPhoto.message = content.message || "the query photo could not be loaded";
        drawEvidence();
      }
      return;
    }
    if (!previewPending || previewPending.request !== content.request) return;
    previewPending = null;
    const url = safeUrl(content.url) || (bytes && bytes.byteLength ? blobUrl(bytes, compareUrls) : null);
    if (url && compareIndex >= 0) {
      const hit = (model.get("results") || [])[compareIndex];
      if (hit && hit.image_key === content.key) {
        compareResultImg.src = url;
        compareResultImg.dataset.size = "large";
      }
    }
  }

  const listeners = [
    [compareClose, "click", () => closeCompare()],
    [comparePrev, "click", () => showCompare(compareIndex - 1)],
    [compareResultImg, "load", () => drawEvidence()],
    [compareNext, "click", () => showCompare(compareIndex + 1)],
  ];
  for (const [target, type, fn] of listeners) target.addEventListener(type, fn);

  return {
    el: compareBox,
    show: showCompare,
    close: closeCompare,
    isOpen: () => compareIndex >= 0,
    index: () => compareIndex,
    /** The results changed: show the same index again, or close when it is gone. */
    onResults(list) {
      if (compareIndex < 0) return;
      if (compareIndex < list.length) showCompare(compareIndex, false);
      else closeCompare(false);
    },
    updateQueryPreview() {
      retire(queryPreviewUrls);
      queryPreviewUrl = blobUrl(model.get("query_preview"), queryPreviewUrls);
      if (compareIndex >= 0) setCompareQuery();
    },
    onPreviewMessage,
    dispose() {
      disposed = true;
      for (const [target, type, fn] of listeners) target.removeEventListener(type, fn);
      revoke(compareUrls);
      revoke(queryPreviewUrls);
      revoke(queryPhotoUrls);
    },
  };
}
