// papyrus-widgets: the PapyrusSearch notebook widget (anywidget ESM, no framework, no build step).
//
// The kernel side lives in papyrus_widgets/widget.py. Traits this view reads:
//   k           Int      number of results (two-way, bound to the "Results" input)
//   status      Dict     {state, stage, elapsed, message} pushed by the kernel about every second
//   results     List     hit dicts (rank, score, inventory, inventory_key, title, date_text, place, papyri_info_url, …)
//   thumbnails  List     JPEG thumbnails, one binary buffer per result, same order (arrive as DataView)
//   query_name  Unicode  name of the query image the kernel holds
//   error       Unicode  last error message ("" when none)
// Messages this view sends:
//   {type: "search", name, k} with the image bytes as buffers[0]
//   {type: "cancel"}
//
// The pure helpers are named exports so `node --test js/test/` can check them without a browser.

/** Human words for the stages a search job goes through. */
export const STAGE_LABELS = {
  submitting: "starting",
  queued: "queued",
  preparing: "preparing image",
  embedding: "embedding",
  searching: "searching",
  verifying: "verifying",
  done: "done",
  error: "error",
  cancelled: "cancelled",
};

/** Seconds as "1.2 s" (one decimal); anything not a finite number counts as 0. */
export function formatSeconds(seconds) {
  const s = Number(seconds);
  return `${(Number.isFinite(s) && s > 0 ? s : 0).toFixed(1)} s`;
}

/**
 * The status line for a `status` trait value.
 * Returns {text, kind}; kind is one of "idle" | "running" | "done" | "error" | "cancelled".
 */
export function statusText(status) {
  if (!status || typeof status !== "object" || !status.state) {
    return { text: "Choose a papyrus image and press Search.", kind: "idle" };
  }
  const elapsed = formatSeconds(status.elapsed);
  switch (status.state) {
    case "running": {
      const stage = STAGE_LABELS[status.stage] || String(status.stage || "working");
      return { text: `${stage}… ${elapsed}`, kind: "running" };
    }
    case "done":
      return { text: `done in ${elapsed}`, kind: "done" };
    case "cancelled":
      return { text: `cancelled after ${elapsed}`, kind: "cancelled" };
    case "error": {
      const message = String(status.message || "").trim();
      return { text: message || "The search failed.", kind: "error" };
    }
    default:
      return { text: String(status.state), kind: "idle" };
  }
}

/** Cosine similarity as "0.973"; "–" when missing. */
export function formatSimilarity(score) {
  if (score === null || score === undefined || score === "") return "–";
  const s = Number(score);
  return Number.isFinite(s) ? s.toFixed(3) : "–";
}

/** `url` if it is an absolute http(s) URL, else null (never put javascript: into an href). */
export function safeUrl(url) {
  if (typeof url !== "string" || url === "") return null;
  try {
    const parsed = new URL(url);
    return parsed.protocol === "https:" || parsed.protocol === "http:" ? parsed.href : null;
  } catch {
    return null;
  }
}

function text(value) {
  if (value === null || value === undefined) return "";
  return String(value).trim();
}

/** What one result card shows, from a hit dict of the `results` trait. */
export function cardModel(hit, index = 0) {
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
  };
}

/** A Uint8Array view of a buffer as ipywidgets delivers it (DataView), or of an ArrayBuffer / typed array. */
export function toBytes(buffer) {
  if (!buffer) return new Uint8Array(0);
  if (buffer instanceof Uint8Array) return buffer;
  if (ArrayBuffer.isView(buffer)) return new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  if (buffer instanceof ArrayBuffer) return new Uint8Array(buffer);
  return new Uint8Array(0);
}

/** MIME type of image bytes from their magic number (thumbnails are JPEG; be lenient). */
export function sniffImageType(bytes) {
  const b = toBytes(bytes);
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return "image/jpeg";
  if (b.length >= 8 && b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47) return "image/png";
  if (b.length >= 12 && b[0] === 0x52 && b[1] === 0x49 && b[2] === 0x46 && b[3] === 0x46 && b[8] === 0x57) {
    return "image/webp";
  }
  if (b.length >= 3 && b[0] === 0x47 && b[1] === 0x49 && b[2] === 0x46) return "image/gif";
  return "application/octet-stream";
}

/** The k input's value as a whole number within [min, max], or null when it is not a number. */
export function parseK(value, min = 1, max = 100) {
  const n = Math.round(Number(value));
  if (value === "" || value === null || !Number.isFinite(n)) return null;
  return Math.min(max, Math.max(min, n));
}

// ---------------------------------------------------------------------------------------------
// DOM

let uid = 0;

function h(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function renderCard(hit, index, thumbUrl) {
  const card = cardModel(hit, index);
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
    },
    [
      h("div", { class: "papyrus-thumb-frame" }, [image]),
      h("div", { class: "papyrus-card-head" }, [
        h("span", { class: "papyrus-rank", "data-testid": "result-rank", text: `#${card.rank}` }),
        h("span", {
          class: "papyrus-score",
          "data-testid": "result-score",
          title: "cosine similarity (1 = identical)",
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

function render({ model, el }) {
  const id = `papyrus-${++uid}`;
  let chosenFile = null;
  let reading = false;
  let objectUrls = [];

  const fileInput = h("input", {
    id: `${id}-file`,
    class: "papyrus-file",
    type: "file",
    accept: "image/*",
    "data-testid": "file-input",
  });
  const kInput = h("input", {
    id: `${id}-k`,
    class: "papyrus-k",
    type: "number",
    min: 1,
    max: 100,
    step: 1,
    inputmode: "numeric",
    "data-testid": "k-input",
  });
  const searchButton = h("button", {
    class: "papyrus-button papyrus-button-primary",
    type: "submit",
    "data-testid": "search-button",
    text: "Search",
  });
  const cancelButton = h("button", {
    class: "papyrus-button",
    type: "button",
    "data-testid": "cancel-button",
    text: "Cancel",
  });
  const queryLine = h("div", { class: "papyrus-query", "data-testid": "query-name" });
  const statusLine = h("div", { class: "papyrus-status", "data-testid": "status", "aria-live": "polite" });
  const resultsList = h("ol", { class: "papyrus-results", "data-testid": "results", "aria-label": "Nearest reference papyri" });

  const form = h("form", { class: "papyrus-controls", "aria-label": "Search reference papyri by image" }, [
    h("div", { class: "papyrus-field" }, [
      h("label", { for: fileInput.id, text: "Papyrus image" }),
      fileInput,
    ]),
    h("div", { class: "papyrus-field papyrus-field-k" }, [
      h("label", { for: kInput.id, text: "Results" }),
      kInput,
    ]),
    h("div", { class: "papyrus-actions" }, [searchButton, cancelButton]),
  ]);
  const root = h("div", { class: "papyrus-search" }, [form, queryLine, statusLine, resultsList]);
  el.append(root);

  const isRunning = () => (model.get("status") || {}).state === "running";

  function updateButtons() {
    searchButton.disabled = !chosenFile || reading;
    cancelButton.disabled = !isRunning();
  }

  function updateK() {
    const k = model.get("k");
    if (document.activeElement !== kInput || parseK(kInput.value) !== k) kInput.value = String(k);
  }

  function updateQuery() {
    const name = model.get("query_name") || "";
    queryLine.textContent = name ? `Query: ${name}` : "";
    queryLine.hidden = !name;
  }

  function updateStatus() {
    const status = model.get("status") || {};
    const { text: line, kind } = statusText(status);
    statusLine.textContent = line;
    statusLine.dataset.state = kind;
    if (kind === "error") statusLine.setAttribute("role", "alert");
    else statusLine.removeAttribute("role");
    root.setAttribute("aria-busy", kind === "running" ? "true" : "false");
    updateButtons();
  }

  function revokeUrls() {
    for (const url of objectUrls) URL.revokeObjectURL(url);
    objectUrls = [];
  }

  function updateResults() {
    const results = model.get("results") || [];
    const thumbnails = model.get("thumbnails") || [];
    revokeUrls();
    const cards = results.map((hit, i) => {
      const bytes = toBytes(thumbnails[i]);
      let url = null;
      if (bytes.byteLength > 0) {
        url = URL.createObjectURL(new Blob([bytes], { type: sniffImageType(bytes) }));
        objectUrls.push(url);
      }
      return renderCard(hit, i, url);
    });
    resultsList.replaceChildren(...cards);
    resultsList.hidden = cards.length === 0;
  }

  function onFileChange() {
    chosenFile = fileInput.files && fileInput.files.length ? fileInput.files[0] : null;
    updateButtons();
  }

  function onKChange() {
    const k = parseK(kInput.value);
    if (k === null) {
      updateK();
      return;
    }
    kInput.value = String(k);
    if (k !== model.get("k")) {
      model.set("k", k);
      model.save_changes();
    }
  }

  async function onSubmit(event) {
    event.preventDefault();
    if (!chosenFile || reading) return;
    onKChange();
    reading = true;
    updateButtons();
    try {
      const buffer = await chosenFile.arrayBuffer();
      model.send({ type: "search", name: chosenFile.name, k: model.get("k") }, undefined, [buffer]);
    } catch (err) {
      statusLine.textContent = `Could not read ${chosenFile.name}: ${err && err.message ? err.message : err}`;
      statusLine.dataset.state = "error";
      statusLine.setAttribute("role", "alert");
    } finally {
      reading = false;
      updateButtons();
    }
  }

  function onCancel() {
    model.send({ type: "cancel" });
  }

  fileInput.addEventListener("change", onFileChange);
  kInput.addEventListener("change", onKChange);
  form.addEventListener("submit", onSubmit);
  cancelButton.addEventListener("click", onCancel);
  model.on("change:k", updateK);
  model.on("change:query_name", updateQuery);
  model.on("change:status", updateStatus);
  model.on("change:results", updateResults);
  model.on("change:thumbnails", updateResults);

  updateK();
  updateQuery();
  updateStatus();
  updateResults();

  return () => {
    fileInput.removeEventListener("change", onFileChange);
    kInput.removeEventListener("change", onKChange);
    form.removeEventListener("submit", onSubmit);
    cancelButton.removeEventListener("click", onCancel);
    model.off("change:k", updateK);
    model.off("change:query_name", updateQuery);
    model.off("change:status", updateStatus);
    model.off("change:results", updateResults);
    model.off("change:thumbnails", updateResults);
    revokeUrls();
    root.remove();
  };
}

export default { render };
