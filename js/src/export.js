// Export: the results on show as CSV or JSON files (pure formatting, and the two buttons).

import { h } from "./dom.js";

export const EXPORT_COLUMNS = [
  "rank",
  "score",
  "inventory",
  "title",
  "date_text",
  "date_from",
  "date_to",
  "place",
  "collection",
  "hgv_id",
  "tm_id",
  "papyri_info_url",
  "key",
  "inventory_key",
  "source_name",
];

/** One CSV field (RFC 4180), with spreadsheet formulas defused (a leading ' on =, +, -, @ text). */
export function csvCell(value) {
  if (value === null || value === undefined) return "";
  if (Array.isArray(value)) return csvCell(value.join("; "));
  if (typeof value === "number") return Number.isFinite(value) ? String(value) : "";
  let s = String(value);
  if (/^[=+\-@\t\r]/.test(s) && !/^[+-]?\d+(\.\d+)?$/.test(s)) s = `'${s}`;
  return /[",\r\n]/.test(s) || s !== s.trim() ? `"${s.replace(/"/g, '""')}"` : s;
}

/** The hits as CSV text (header row, CRLF line ends). */
export function resultsToCsv(results, columns = EXPORT_COLUMNS) {
  const rows = [columns.join(",")];
  for (const hit of results || []) rows.push(columns.map((c) => csvCell(hit ? hit[c] : null)).join(","));
  return rows.join("\r\n") + "\r\n";
}

/** The hits as JSON text: {query, elapsed, k, filters, corners, hits}. */
export function resultsToJson(results, meta = {}) {
  return JSON.stringify({ ...meta, hits: results || [] }, null, 2) + "\n";
}

/** A download file name for the results of `queryName`. */
export function exportFileName(queryName, extension) {
  const stem = String(queryName || "query")
    .replace(/\.[^.]*$/, "")
    .replace(/[^\p{L}\p{N}_-]+/gu, "_")
    .replace(/^_+|_+$/g, "")
    .slice(0, 60);
  return `papyrus-results-${stem || "query"}.${extension}`;
}


/** The metadata a JSON export carries: the query, its time, and the k, filters and corners it was searched with. */
export function exportMeta(model) {
  const entries = model.get("history") || [];
  const entry = entries.find((e) => e.id === model.get("history_id")) || {};
  return {
    query: model.get("query_name") || "",
    elapsed: (model.get("status") || {}).elapsed ?? null,
    k: entry.k ?? model.get("k"),
    filters: entry.filters ?? model.get("filters") ?? {},
    corners: entry.corners ?? null,
  };
}

/** The export buttons of one view: {el, update, dispose}; `update()` enables them when there are results. */
export function createExport({ model }) {
  const csvButton = h("button", { class: "papyrus-button", type: "button", "data-testid": "export-csv", text: "Export CSV" });
  const jsonButton = h("button", { class: "papyrus-button", type: "button", "data-testid": "export-json", text: "Export JSON" });
  const el = h("div", { class: "papyrus-actions" }, [csvButton, jsonButton]);

  function download(textValue, type, filename) {
    const blob = new Blob([textValue], { type });
    const url = URL.createObjectURL(blob);
    const a = h("a", { href: url, download: filename, hidden: true });
    el.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  }

  function onCsv() {
    const results = model.get("results") || [];
    download("\ufeff" + resultsToCsv(results), "text/csv;charset=utf-8", exportFileName(model.get("query_name"), "csv"));
  }

  function onJson() {
    const results = model.get("results") || [];
    download(resultsToJson(results, exportMeta(model)), "application/json", exportFileName(model.get("query_name"), "json"));
  }

  csvButton.addEventListener("click", onCsv);
  jsonButton.addEventListener("click", onJson);
  return {
    el,
    update() {
      const hasResults = (model.get("results") || []).length > 0;
      csvButton.disabled = !hasResults;
      jsonButton.disabled = !hasResults;
    },
    dispose() {
      csvButton.removeEventListener("click", onCsv);
      jsonButton.removeEventListener("click", onJson);
    },
  };
}
