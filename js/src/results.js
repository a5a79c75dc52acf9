// The results grid: one card per hit of the `results` trait, with its thumbnail (a presigned URL
// from `thumbnail_urls`, else the bytes of `thumbnails`), and the count above it.

import { blobUrl, h, retire, revoke, safeUrl, text } from "./dom.js";

/** Cosine similarity as "0.973"; "–" when missing. */
export function formatSimilarity(score) {
  if (score === null || score === undefined || score === "") return "–";
  const s = Number(score);
  return Number.isFinite(s) ? s.toFixed(3) : "–";
}

/** Whether the search of these hit dicts was verified (the confirming stage ran: some hit has `inliers`). */
export function searchVerified(results) {
  return Array.isArray(results) && results.some((r) => r && typeof r === "object" && r.inliers !== null && r.inliers !== undefined);
}

/**
 * The badge of a hit: {text: "Confirmed", kind: "confirmed", title} when the kernel confirmed it
 * (the same papyrus is in the photo); {text: "Nearly", kind: "near", title} for a near miss (not
 * confirmed, but many keypoints agree: the kernel's `near_miss`); {text: "Similar", kind:
 * "similar", title} for the others of a verified search; null when the search was not verified
 * (nothing was confirmed or ruled out).
 */
export function hitBadge(hit, verified) {
  const h = hit && typeof hit === "object" ? hit : {};
  if (h.confirmed === true) {
    return { text: "Confirmed", kind: "confirmed", title: "Confirmed: its keypoints agree with the photo on one geometry (the same papyrus)" };
  }
  if (!verified) return null;
  if (h.near_miss === true) {
    const n = Number.isFinite(Number(h.inliers)) ? `${Number(h.inliers)} keypoints agree` : "many keypoints agree";
    return { text: "Nearly", kind: "near", title: `Not confirmed, but nearly: ${n} on one geometry, too few to confirm it (compare it with the photo)` };
  }
  return { text: "Similar", kind: "similar", title: "Only similar: not confirmed as the papyrus in the photo" };
}

/**
 * What one result card shows, from a hit dict of the `results` trait. `verified`: whether the
 * search was verified (searchVerified of all its hits), for the "Similar" badge.
 */
export function cardModel(hit, index = 0, { verified = false } = {}) {
  const h = hit && typeof hit === "object" ? hit : {};
  const rank = Number.isFinite(Number(h.rank)) && h.rank !== null && h.rank !== "" ? Number(h.rank) : index + 1;
  const inventory = text(h.inventory) || text(h.inventory_key) || text(h.key) || "unknown inventory";
  const date = text(h.date_text);
  const place = text(h.place);
  return {
    rank,
    similarity: formatSimilarity(h.score),
    inventory,
    inventoryKey: text(h.inventory_key),
    title: text(h.title),
    date,
    place,
    meta: [date, place].filter(Boolean).join(" · "),
    url: safeUrl(h.papyri_info_url),
    alt: `Thumbnail of ${inventory}`,
    badge: hitBadge(h, verified),
  };
}

export function renderCard(hit, index, thumbUrl, { verified = false } = {}) {
  const card = cardModel(hit, index, { verified });
  const image = thumbUrl
    ? h("img", { class: "papyrus-thumb", src: thumbUrl, alt: card.alt, loading: "lazy", "data-testid": "result-thumbnail" })
    : h("div", { class: "papyrus-thumb papyrus-thumb-missing", role: "img", "aria-label": `No thumbnail for ${card.inventory}` }, [
        document.createTextNode("no image"),
      ]);
  return h(
    "li",
    {
      class: "papyrus-card",
      "data-testid": "result-card",
      "data-rank": card.rank,
      "data-inventory-key": card.inventoryKey,
      "data-index": index,
      "data-confirmed": card.badge ? String(card.badge.kind === "confirmed") : "",
    },
    [
      h(
        "button",
        {
          type: "button",
          class: "papyrus-thumb-frame",
          "data-testid": "result-open",
          "data-index": index,
          title: "Compare with the query",
          "aria-label": `Compare ${card.inventory} with the query`,
        },
        [image],
      ),
      h("div", { class: "papyrus-card-head" }, [
        h("span", { class: "papyrus-rank", "data-testid": "result-rank", text: `#${card.rank}` }),
        card.badge
          ? h("span", {
              class: `papyrus-badge papyrus-badge-${card.badge.kind}`,
              "data-testid": "result-badge",
              "data-kind": card.badge.kind,
              title: card.badge.title,
              text: card.badge.kind === "confirmed" ? `✓ ${card.badge.text}` : card.badge.text,
            })
          : null,
        h("span", {
          class: "papyrus-score",
          "data-testid": "result-score",
          title: "score: 0.5 … 1 for a confirmed papyrus, below 0.5 for one that is only similar",
          text: card.similarity,
        }),
      ]),
      h("div", { class: "papyrus-inventory", "data-testid": "result-inventory", text: card.inventory }),
      card.title ? h("div", { class: "papyrus-title", "data-testid": "result-title", text: card.title }) : null,
      card.meta ? h("div", { class: "papyrus-meta", "data-testid": "result-meta", text: card.meta }) : null,
      card.url
        ? h("a", {
            class: "papyrus-link",
            "data-testid": "result-link",
            href: card.url,
            target: "_blank",
            rel: "noopener noreferrer",
            text: "papyri.info ↗",
            "aria-label": `papyri.info record of ${card.inventory} (opens in a new tab)`,
          })
        : null,
    ],
  );
}

/**
 * The results grid of one view. `actions` (an element: the export buttons) sits in the bar above
 * the cards; `onOpen(index)` runs when a card is clicked. Returns {bar, el, update, thumbnailUrl,
 * select, focusCard, dispose}.
 */
export function createResults({ model, actions = null, onOpen = () => {} }) {
  let urls = [];
  const count = h("span", { class: "papyrus-results-count", "data-testid": "results-count" });
  const bar = h("div", { class: "papyrus-results-bar", hidden: true }, [count, actions]);
  const list = h("ol", { class: "papyrus-results", "data-testid": "results", "aria-label": "Nearest reference papyri" });

  // A result's thumbnail: its presigned URL when the kernel gave one, else its bytes as a blob URL.
  function thumbnailUrl(index, into) {
    const presigned = safeUrl((model.get("thumbnail_urls") || [])[index]);
    return presigned || blobUrl((model.get("thumbnails") || [])[index], into);
  }

  function onClick(event) {
    const button = event.target.closest('[data-testid="result-open"]');
    if (!button || !list.contains(button)) return;
    onOpen(Number(button.dataset.index));
  }
  list.addEventListener("click", onClick);

  return {
    bar,
    el: list,
    thumbnailUrl,
    /** Render the cards of the `results` trait; returns the results. */
    update() {
      const results = model.get("results") || [];
      retire(urls);
      const verified = searchVerified(results);
      const cards = results.map((hit, i) => renderCard(hit, i, thumbnailUrl(i, urls), { verified }));
      list.replaceChildren(...cards);
      list.hidden = cards.length === 0;
      bar.hidden = cards.length === 0;
      count.textContent = cards.length ? `${cards.length} result${cards.length === 1 ? "" : "s"}` : "";
      return results;
    },
    /** Mark card `index` as the one compared (-1: none). */
    select(index) {
      for (const card of list.children) card.classList.toggle("papyrus-card-selected", Number(card.dataset.index) === index);
    },
    /** Focus the open button of card `index`; false when there is none. */
    focusCard(index) {
      const button = list.querySelector(`[data-testid="result-open"][data-index="${index}"]`);
      if (!button) return false;
      button.focus({ preventScroll: true });
      return true;
    },
    dispose() {
      list.removeEventListener("click", onClick);
      revoke(urls);
    },
  };
}
