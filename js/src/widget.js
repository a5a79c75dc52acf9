// papyrus-widgets: the PapyrusSearch notebook widget (anywidget ESM, no framework). js/build.mjs
// bundles this module and the parts it imports (js/src/*.js) into papyrus_widgets/static/widget.js.
//
// The kernel side lives in papyrus_widgets/widget.py. Traits this view reads:
//   k                 Int      number of results (two-way, bound to the "Results" input)
//   max_side          Int      long side (px) to which larger photos are downscaled here before sending
//   filters           Dict     metadata filters (two-way): date_from, date_to (years, negative = BC), place, collection
//   status            Dict     {state, stage, elapsed, message} pushed by the kernel about every second
//   results           List     hit dicts (rank, score, confirmed, region, inventory, inventory_key, title, date_text, place, …)
//   thumbnails        List     JPEG thumbnails, one binary buffer per result, same order (arrive as DataView)
//   query_name        Unicode  name of the query image the kernel holds
//   query_preview     Bytes    JPEG of the query as searched (the deskewed crop) for the results on show
//   error             Unicode  last error message ("" when none)
//   verdict           Unicode  one line on the results on show (api.Results.verdict: "confirmed: …",
//                              "no confirmed match in this collection: …", "not verified: …"; "" when none)
//   history           List     finished searches {id, name, k, filters, corners, count, elapsed, top}
//   history_previews  List     query preview JPEG per history entry
//   history_id        Unicode  id of the history entry on show
//   thumbnail_urls    List     presigned URL per result when presigned URLs are configured (else []); used before `thumbnails`
//   query_image_key   Unicode  object key of the stored query photo the hits' evidence `matches` refer to
//   dashboard_link    Unicode  URL of the Dask dashboard ("" until the engine's cluster runs)
// Messages this view sends (buffers in brackets):
//   {type: "search", request, name, k, corners, filters} [image, query preview JPEG]   → {type: "ack", request, ok}
//   {type: "cancel"}
//   {type: "suggest_corners", request, name} [image]        → {type: "corners", request, corners | null, message}
//   {type: "restore", id}
//   {type: "preview", request, key}                         → {type: "preview", request, key, message, url?} [JPEG]
//     (key: a result's image_key, or query_image_key for the evidence drawing; `url` instead of a
//     buffer when the kernel hands out presigned URLs)
//
// Corners are marked on the photo as the browser shows it (EXIF orientation applied), in that
// image's pixels, and sent in the pixels of the image actually sent (scaled when it was downscaled).
// A search sent without corners whose top hit is confirmed comes back with that hit's `region` in
// the pixels of the photo the kernel stored (the image sent, of the hit's `query_size`): the
// editor takes it as suggested corners (scaled back to the photo shown, clipped to it).
//
// The parts of the view are factories in their own modules (one per part, each tested with
// `node --test js/test/`); render() builds them and wires the model to them.
import { createCompare } from "./compare.js";
import { NO_IMAGE_MESSAGE, createControls } from "./controls.js";
import { errorText, h } from "./dom.js";
import { createQueryEditor } from "./editor.js";
import { createExport } from "./export.js";
import { scalePoints } from "./geometry.js";
import { createHistory } from "./history.js";
import { createResults } from "./results.js";
import { createStageLine } from "./stages.js";

let uid = 0;

/** Several traits change in one kernel message (results + thumbnails, the history's three traits): run once, after all. */
function batcher(isDisposed) {
  const scheduled = new Set();
  return (fn) => {
    if (scheduled.size === 0) {
      queueMicrotask(() => {
        const fns = [...scheduled];
        scheduled.clear();
        if (!isDisposed()) fns.forEach((f) => f());
      });
    }
    scheduled.add(fn);
  };
}

export function render({ model, el }) {
  const id = `papyrus-${++uid}`;
  let requestSeq = 0;
  const nextRequest = () => `${id}-${++requestSeq}`;
  let disposed = false;
  const schedule = batcher(() => disposed);
  let searched = null; // the last search sent: {chosen, corners: bool, knownIds: history ids before it}

  const root = h("div", {
    class: "papyrus-search",
    // Keys typed inside the widget are the widget's: JupyterLab's notebook shortcuts skip them.
    "data-lm-suppress-shortcuts": "true",
  });
  const stages = createStageLine({ model, busyTarget: root, onChange: () => updateButtons() });
  const editor = createQueryEditor({
    model,
    id,
    nextRequest,
    onChange: () => updateButtons(),
    onMessage: (message) => stages.refuse(message),
  });
  const controls = createControls({ model, id, imageField: editor.imageField, onSearch: () => search(), onCancel: () => cancel() });
  const exporter = createExport({ model });
  const results = createResults({ model, actions: exporter.el, onOpen: (index) => compare.show(index) });
  const compare = createCompare({ model, id, nextRequest, grid: results });
  const history = createHistory({
    model,
    onRestore: (entryId) => {
      compare.close(false);
      model.send({ type: "restore", id: entryId });
    },
  });
  root.append(controls.form, editor.el, editor.queryLine, stages.el, history.el, compare.el, results.bar, results.el);
  el.append(root);
  editor.attach(root);

  function updateButtons() {
    if (disposed) return;
    const busy = stages.isBusy();
    controls.setButtons({ hasImage: Boolean(editor.chosen()), cornersOk: editor.cornerState().ok, busy });
    exporter.update();
    history.setBusy(busy);
  }

  async function search() {
    const mine = editor.chosen();
    if (!mine) {
      stages.refuse(NO_IMAGE_MESSAGE);
      return;
    }
    controls.commitK();
    const { filters, invalid } = controls.readFilters();
    if (invalid.length) {
      controls.filtersBox.open = true;
      controls.filterInputs[invalid[0]].focus();
      stages.invalid("A date filter is not a year (use whole numbers, negative for BC; from ≤ to).");
      return;
    }
    controls.commitFilters();
    const corners = editor.cornerState().corners;
    const request = nextRequest();
    searched = { chosen: mine, corners: Boolean(corners), knownIds: new Set((model.get("history") || []).map((e) => e && e.id)) };
    stages.startUpload(request);
    try {
      const upload = await editor.prepared(mine);
      const preview = await editor.queryPreviewBytes(mine, corners).catch(() => null);
      if (!stages.isUploading(request)) return; // cancelled or superseded
      const sent = corners ? scalePoints(corners, upload.scaleX, upload.scaleY) : null;
      const buffers = preview ? [upload.bytes.slice(0), preview] : [upload.bytes.slice(0)];
      model.send({ type: "search", request, name: upload.name, k: model.get("k"), corners: sent, filters }, undefined, buffers);
    } catch (err) {
      stages.uploadFailed(request, `Could not read ${mine.name}: ${errorText(err)}. Choose the file again.`);
    }
  }

  function cancel() {
    stages.cancel();
    model.send({ type: "cancel" });
  }

  function onCustomMessage(content, buffers) {
    if (!content || typeof content !== "object") return;
    if (content.type === "ack") stages.ack(content.request);
    else if (content.type === "corners") editor.onCornersMessage(content);
    else if (content.type === "decoded") editor.onDecodedMessage(content, buffers);
    else if (content.type === "preview") compare.onPreviewMessage(content, buffers);
  }

  function onKeyDown(event) {
    if (event.key !== "Escape") return;
    if (compare.isOpen()) {
      event.preventDefault();
      event.stopPropagation();
      compare.close();
    } else if (stages.isBusy()) {
      event.preventDefault();
      event.stopPropagation();
      cancel();
    }
  }
  root.addEventListener("keydown", onKeyDown);

  function updateResults() {
    const list = results.update();
    compare.onResults(list);
    offerRegion(list);
    updateButtons();
  }

  // The results of the search this view sent without corners: its top hit's region (when
  // confirmed) becomes the editor's suggested corners, once.
  function offerRegion(list) {
    const entryId = model.get("history_id");
    if (!searched || !list.length || !entryId || searched.knownIds.has(entryId)) return;
    const mine = searched;
    searched = null;
    const entry = (model.get("history") || []).find((e) => e && e.id === entryId);
    const top = list[0];
    if (mine.corners || !entry || entry.corners || !top || top.confirmed !== true) return;
    editor.offerRegion(mine.chosen, top.region, top.query_size);
  }

  function updateHistory() {
    history.update();
    updateButtons();
  }

  const modelEvents = [
    ["change:k", controls.updateK],
    ["change:filters", controls.updateFilters],
    ["change:max_side", editor.onMaxSideChange],
    ["change:query_name", editor.updateQuery],
    ["change:status", stages.onStatusChange],
    ["change:verdict", stages.update],
    ["change:results", () => schedule(updateResults)],
    ["change:thumbnails", () => schedule(updateResults)],
    ["change:query_preview", () => schedule(compare.updateQueryPreview)],
    ["change:history", () => schedule(updateHistory)],
    ["change:history_previews", () => schedule(updateHistory)],
    ["change:history_id", () => schedule(updateHistory)],
    ["change:thumbnail_urls", () => schedule(updateResults)],
    ["change:dashboard_link", stages.updateDashboard],
    ["msg:custom", onCustomMessage],
  ];
  for (const [name, fn] of modelEvents) model.on(name, fn);

  controls.updateK();
  controls.updateFilters();
  editor.updateQuery();
  compare.updateQueryPreview();
  stages.update();
  updateHistory();
  updateResults();
  stages.updateDashboard();

  return () => {
    disposed = true;
    root.removeEventListener("keydown", onKeyDown);
    for (const [name, fn] of modelEvents) model.off(name, fn);
    for (const part of [stages, editor, controls, exporter, results, compare, history]) part.dispose();
    root.remove();
  };
}

export default { render };
