// The search form: the image field (from the query editor), the number of results, the metadata
// filters, Search, Cancel and the help. The parsing of the fields is pure and exported.

import { h, text } from "./dom.js";

export const HELP_TEXT = [
  "Drop a photo onto this widget, paste one (Ctrl+V / ⌘V while the widget has the focus) or choose a file.",
  "Click the four corners of the papyrus on the photo, in any order, to correct the perspective; drag a corner to adjust it; " +
    "Suggest corners looks for the papyrus for you. Without corners the whole photo is searched.",
  "Enter searches; Escape closes the comparison or cancels a running search. " +
    "Searching again while a search runs cancels the running search (searches are not queued).",
  "Click a result to compare it with your query; earlier searches of this session stay in the history strip.",
];


/** The k input's value as a whole number within [min, max], or null when it is not a number. */
export function parseK(value, min = 1, max = 100) {
  const n = Math.round(Number(value));
  if (value === "" || value === null || !Number.isFinite(n)) return null;
  return Math.min(max, Math.max(min, n));
}

/** A year field: "" → null; "-30" → -30; anything else that is not a whole number → NaN. */
export function parseYear(value) {
  const s = String(value ?? "").trim();
  if (s === "") return null;
  if (!/^[-−]?\d{1,5}$/.test(s)) return Number.NaN;
  return Number(s.replace("−", "-"));
}

/** The filter fields' values → the `filters` trait (empty fields left out); {filters, invalid: [names]}. */
export function filtersFromFields(fields) {
  const filters = {};
  const invalid = [];
  for (const name of ["date_from", "date_to"]) {
    const year = parseYear(fields[name]);
    if (Number.isNaN(year)) invalid.push(name);
    else if (year !== null) filters[name] = year;
  }
  for (const name of ["place", "collection"]) {
    const value = text(fields[name]);
    if (value) filters[name] = value;
  }
  if (filters.date_from !== undefined && filters.date_to !== undefined && filters.date_from > filters.date_to) {
    invalid.push("date_to");
  }
  return { filters, invalid };
}

/** "2 filters" style summary for the Filters disclosure. */
export function filtersSummary(filters) {
  const n = Object.values(filters || {}).filter((v) => v !== null && v !== undefined && v !== "").length;
  return n === 0 ? "Filters" : `Filters (${n})`;
}

/** What Search says when there is no image to search. */
export const NO_IMAGE_MESSAGE = "Choose a papyrus image first: drop a photo here, paste one (Ctrl+V) or choose a file.";

/**
 * The search form of one view. `imageField` is the image chooser (the editor's drop zone);
 * `onSearch()` runs on Search (the button or Enter in a field); `onCancel()` on Cancel.
 * Returns {form, kInput, filterInputs, filtersBox, searchButton, cancelButton, updateK, updateFilters,
 * readFilters, commitK, commitFilters, setButtons, dispose}.
 */
export function createControls({ model, id, imageField, onSearch = () => {}, onCancel = () => {} }) {
  const kInput = h("input", {
    id: `${id}-k`,
    class: "papyrus-k papyrus-input",
    type: "number",
    min: 1,
    max: 100,
    step: 1,
    inputmode: "numeric",
    "data-testid": "k-input",
  });
  const filterInputs = {
    date_from: h("input", {
      id: `${id}-date-from`,
      class: "papyrus-input papyrus-year",
      type: "text",
      inputmode: "numeric",
      placeholder: "e.g. -50",
      "data-testid": "filter-date-from",
      "aria-describedby": `${id}-year-hint`,
    }),
    date_to: h("input", {
      id: `${id}-date-to`,
      class: "papyrus-input papyrus-year",
      type: "text",
      inputmode: "numeric",
      placeholder: "e.g. 300",
      "data-testid": "filter-date-to",
      "aria-describedby": `${id}-year-hint`,
    }),
    place: h("input", {
      id: `${id}-place`,
      class: "papyrus-input",
      type: "text",
      placeholder: "e.g. Hermopolis",
      "data-testid": "filter-place",
    }),
    collection: h("input", {
      id: `${id}-collection`,
      class: "papyrus-input",
      type: "text",
      placeholder: "e.g. P.Heid.",
      "data-testid": "filter-collection",
    }),
  };
  const filterSummary = h("summary", { "data-testid": "filters-toggle", text: "Filters" });
  const filtersBox = h("details", { class: "papyrus-filters", "data-testid": "filters" }, [
    filterSummary,
    h("div", { class: "papyrus-filter-grid" }, [
      h("div", { class: "papyrus-field" }, [h("label", { for: filterInputs.date_from.id, text: "Date from (year)" }), filterInputs.date_from]),
      h("div", { class: "papyrus-field" }, [h("label", { for: filterInputs.date_to.id, text: "Date to (year)" }), filterInputs.date_to]),
      h("div", { class: "papyrus-field" }, [h("label", { for: filterInputs.place.id, text: "Place" }), filterInputs.place]),
      h("div", { class: "papyrus-field" }, [h("label", { for: filterInputs.collection.id, text: "Collection" }), filterInputs.collection]),
      h("p", {
        id: `${id}-year-hint`,
        class: "papyrus-hint",
        text: "Years AD; negative for BC. A papyrus matches when its date range overlaps.",
      }),
    ]),
  ]);
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
  const helpBox = h("details", { class: "papyrus-help", "data-testid": "help" }, [
    h("summary", { text: "Help" }),
    h("ul", {}, HELP_TEXT.map((line) => h("li", { text: line }))),
  ]);
  const form = h("form", { class: "papyrus-controls", "aria-label": "Search reference papyri by image" }, [
    imageField,
    h("div", { class: "papyrus-field papyrus-field-k" }, [h("label", { for: kInput.id, text: "Results" }), kInput]),
    h("div", { class: "papyrus-actions" }, [searchButton, cancelButton]),
    filtersBox,
    helpBox,
  ]);

  const focused = (input) => typeof document !== "undefined" && document.activeElement === input;

  function updateK() {
    const k = model.get("k");
    if (!focused(kInput) || parseK(kInput.value) !== k) kInput.value = String(k);
  }

  function updateFilters() {
    const filters = model.get("filters") || {};
    for (const [name, input] of Object.entries(filterInputs)) {
      if (focused(input)) continue;
      const value = filters[name];
      input.value = value === null || value === undefined ? "" : String(value);
      input.removeAttribute("aria-invalid");
    }
    filterSummary.textContent = filtersSummary(filters);
  }

  function readFilters() {
    const values = Object.fromEntries(Object.entries(filterInputs).map(([name, input]) => [name, input.value]));
    const { filters, invalid } = filtersFromFields(values);
    for (const [name, input] of Object.entries(filterInputs)) {
      if (invalid.includes(name)) input.setAttribute("aria-invalid", "true");
      else input.removeAttribute("aria-invalid");
    }
    return { filters, invalid };
  }

  function commitFilters() {
    const { filters, invalid } = readFilters();
    if (invalid.length) return;
    const current = model.get("filters") || {};
    if (JSON.stringify(current) !== JSON.stringify(filters)) {
      model.set("filters", filters);
      model.save_changes();
    }
    filterSummary.textContent = filtersSummary(filters);
  }

  function commitK() {
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

  function onSubmit(event) {
    event.preventDefault();
    if (searchButton.disabled) return;
    onSearch();
  }

  function onFieldKey(event) {
    // Enter in a field searches. Done here rather than left to the form's implicit submission,
    // which some notebook front ends swallow (JupyterLab holds keydown events for its shortcuts).
    if (event.key !== "Enter" || event.isComposing || event.shiftKey || event.ctrlKey || event.altKey || event.metaKey) return;
    event.preventDefault();
    event.stopPropagation();
    if (event.target === kInput) commitK();
    else commitFilters();
    if (!searchButton.disabled) onSearch();
  }

  const listeners = [
    [kInput, "change", commitK],
    [kInput, "keydown", onFieldKey],
    [form, "submit", onSubmit],
    [cancelButton, "click", () => onCancel()],
  ];
  for (const input of Object.values(filterInputs)) listeners.push([input, "change", commitFilters], [input, "keydown", onFieldKey]);
  for (const [target, type, fn] of listeners) target.addEventListener(type, fn);

  return {
    form,
    kInput,
    filterInputs,
    filtersBox,
    searchButton,
    cancelButton,
    updateK,
    updateFilters,
    readFilters,
    commitK,
    commitFilters,
    /**
     * hasImage: an image is chosen; cornersOk: its corners (if any) can be used; busy: a search runs.
     * Without an image Search stays pressable (aria-disabled) so that it can say what is missing;
     * with unusable corners it is disabled (the corner hint says why).
     */
    setButtons({ hasImage, cornersOk, busy }) {
      searchButton.disabled = Boolean(hasImage) && !cornersOk;
      if (hasImage) searchButton.removeAttribute("aria-disabled");
      else searchButton.setAttribute("aria-disabled", "true");
      cancelButton.disabled = !busy;
    },
    dispose() {
      for (const [target, type, fn] of listeners) target.removeEventListener(type, fn);
    },
  };
}
