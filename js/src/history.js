// The history strip: one button per finished search of this session (`history`,
// `history_previews`); the one on show (`history_id`) is pressed, and a click restores it.

import { blobUrl, h, retire, revoke, text } from "./dom.js";

/** The accessible label of a history entry. */
export function historyLabel(entry) {
  const e = entry || {};
  const parts = [`${text(e.name) || "query"}: ${Number(e.count) || 0} results`];
  if (e.top) parts.push(`best ${e.top}`);
  if (e.corners) parts.push("deskewed");
  const n = Object.keys(e.filters || {}).length;
  if (n) parts.push(`${n} filter${n === 1 ? "" : "s"}`);
  return parts.join(", ");
}

/** The history strip of one view: {el, update, setBusy, dispose}; `onRestore(id)` runs on a click. */
export function createHistory({ model, onRestore = () => {} }) {
  const urls = [];
  let busy = false;
  const list = h("ol", { class: "papyrus-history-list", "data-testid": "history" });
  const el = h("nav", { class: "papyrus-history", "aria-label": "Earlier searches of this session", hidden: true }, [
    h("span", { class: "papyrus-caption", text: "History" }),
    list,
  ]);

  function onClick(event) {
    const button = event.target.closest('[data-testid="history-item"]');
    if (!button || button.disabled) return;
    onRestore(button.dataset.id);
  }
  list.addEventListener("click", onClick);

  function setBusy(value) {
    busy = Boolean(value);
    for (const button of list.querySelectorAll("button")) button.disabled = busy;
  }

  return {
    el,
    update() {
      const entries = model.get("history") || [];
      const previews = model.get("history_previews") || [];
      const current = model.get("history_id") || "";
      retire(urls);
      const items = entries.map((entry, i) => {
        const url = blobUrl(previews[i], urls);
        const label = historyLabel(entry);
        const button = h(
          "button",
          {
            type: "button",
            class: "papyrus-history-item",
            "data-testid": "history-item",
            "data-id": entry.id,
            "aria-pressed": entry.id === current ? "true" : "false",
            "aria-label": label,
            title: label,
          },
          [
            url ? h("img", { src: url, alt: "" }) : h("span", { class: "papyrus-history-text", text: text(entry.name).slice(0, 12) || "query" }),
            h("span", { class: "papyrus-history-count", text: String(Number(entry.count) || 0) }),
          ],
        );
        return h("li", {}, [button]);
      });
      list.replaceChildren(...items);
      el.hidden = items.length === 0;
      setBusy(busy);
    },
    setBusy,
    dispose() {
      list.removeEventListener("click", onClick);
      revoke(urls);
    },
  };
}
