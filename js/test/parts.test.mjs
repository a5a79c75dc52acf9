// The parts of the view (js/src/*.js) built on a stand-in DOM (fakedom.mjs), and the defects
// found when the widget was tried as a new user would. Run: node --test js/test/
import assert from "node:assert/strict";
import { test } from "node:test";

import { createCompare } from "../src/compare.js";
import { NO_IMAGE_MESSAGE, createControls } from "../src/controls.js";
import { capitalise, h } from "../src/dom.js";
import { PASTE_NO_IMAGE_MESSAGE, createQueryEditor, isTextField, pastedImageFile } from "../src/editor.js";
import { createExport, exportMeta } from "../src/export.js";
import { createHistory } from "../src/history.js";
import { createResults } from "../src/results.js";
import { createStageLine } from "../src/stages.js";
import { render } from "../src/widget.js";
import { FakeEvent, fakeModel, installDom, settle } from "./fakedom.mjs";

installDom();

const HITS = [
  { rank: 1, score: 0.9, inventory: "P.Heid. inv. G 107", inventory_key: "p_g_107", image_key: "a" },
  { rank: 2, score: 0.8, inventory: "P.Heid. inv. G 24", inventory_key: "p_g_24", image_key: "b" },
];
const chips = (stages) => stages.el.querySelectorAll("li").map((li) => `${li.dataset.step}:${li.dataset.state}`).join(" ");

test("capitalise: messages shown to the user start in upper case", () => {
  assert.equal(capitalise("no papyrus outline found: click the corners."), "No papyrus outline found: click the corners.");
  assert.equal(capitalise("  ÄLTER"), "ÄLTER");
  assert.equal(capitalise(""), "");
  assert.equal(capitalise(null), "");
});

test("stage line: the verifying chip lights while the kernel verifies", () => {
  const model = fakeModel();
  const stages = createStageLine({ model });
  model.update({ status: { state: "running", stage: "verifying", elapsed: 2 } });
  stages.onStatusChange();
  assert.equal(chips(stages), "uploading:done preparing:done embedding:done searching:done verifying:current done:todo");
  assert.equal(stages.el.byTestId("status").textContent.startsWith("verifying…"), true);
  stages.dispose();
});

test("defect: Cancel during the upload leaves no chip lit", () => {
  const model = fakeModel({ status: { state: "done", stage: "done", elapsed: 1 } });
  const stages = createStageLine({ model });
  stages.startUpload("r1");
  assert.match(chips(stages), /^uploading:current/);
  stages.cancel();
  assert.ok(!/:current|:done/.test(chips(stages)), chips(stages));
  assert.match(stages.el.byTestId("status").textContent, /^cancelled after/);
  assert.equal(stages.isBusy(), false);
  stages.dispose();
});

test("defect: Cancel of a running search leaves no chip lit", () => {
  const model = fakeModel();
  const stages = createStageLine({ model });
  for (const stage of ["submitting", "preparing"]) {
    model.update({ status: { state: "running", stage, elapsed: 1 } });
    stages.onStatusChange();
  }
  model.update({ status: { state: "cancelled", stage: "cancelled", elapsed: 1.5 } });
  stages.onStatusChange();
  assert.equal(chips(stages), "uploading:todo preparing:cancelled embedding:todo searching:todo verifying:todo done:todo");
  stages.dispose();
});

test("controls: without an image Search stays pressable and says what is missing", () => {
  const model = fakeModel();
  let searched = 0;
  const controls = createControls({ model, id: "t", imageField: h("div"), onSearch: () => searched++ });
  controls.setButtons({ hasImage: false, cornersOk: true, busy: false });
  assert.equal(controls.searchButton.disabled, false);
  assert.equal(controls.searchButton.getAttribute("aria-disabled"), "true");
  assert.equal(controls.cancelButton.disabled, true);
  controls.searchButton.click();
  assert.equal(searched, 1, "Search with no image reaches the view, which says why nothing is searched");
  controls.kInput.dispatchEvent(new FakeEvent("keydown", { key: "Enter" }));
  assert.equal(searched, 2, "so does Enter in a field");
  controls.setButtons({ hasImage: true, cornersOk: false, busy: true });
  assert.equal(controls.searchButton.disabled, true, "corners that cannot be used disable Search");
  assert.equal(controls.searchButton.hasAttribute("aria-disabled"), false);
  assert.equal(controls.cancelButton.disabled, false);
  controls.dispose();
});

test("defect: Search with no image shows a clear message", async () => {
  const model = fakeModel();
  const el = h("div");
  const dispose = render({ model, el });
  await settle();
  el.byTestId("search-button").click();
  const status = el.byTestId("status");
  assert.equal(status.textContent, NO_IMAGE_MESSAGE);
  assert.equal(status.dataset.state, "error");
  assert.equal(status.getAttribute("role"), "alert");
  assert.equal(el.byTestId("stages").hidden, true, "nothing ran: no stage strip");
  assert.equal(model.sent.length, 0);
  dispose();
});

test("editor: pastedImageFile and isTextField", () => {
  const png = { type: "image/png", name: "image.png" };
  assert.equal(pastedImageFile({ files: [png], items: [] }), png);
  assert.equal(pastedImageFile({ files: [], items: [{ kind: "file", type: "image/jpeg", getAsFile: () => png }] }), png);
  assert.equal(pastedImageFile({ files: [], items: [{ kind: "string", type: "text/plain" }] }), null);
  assert.equal(pastedImageFile({ files: [{ type: "application/pdf" }], items: [] }), null);
  assert.equal(pastedImageFile(null), null);
  assert.equal(isTextField(h("input")), true);
  assert.equal(isTextField(h("div")), false);
});

test("defect: Ctrl+V with nothing usable says so (text pasted into a field goes on as usual)", () => {
  const model = fakeModel();
  const messages = [];
  const editor = createQueryEditor({ model, id: "t", nextRequest: () => "r", onMessage: (m) => messages.push(m) });
  const root = h("div", {}, [editor.imageField, editor.el]);
  editor.attach(root);
  const text = { files: [], items: [{ kind: "string", type: "text/plain" }] };
  const onRoot = new FakeEvent("paste", { clipboardData: text });
  root.dispatchEvent(onRoot);
  assert.deepEqual(messages, [PASTE_NO_IMAGE_MESSAGE]);
  assert.match(messages[0], /^The clipboard holds no image/);
  const field = h("input");
  root.append(field);
  const inField = new FakeEvent("paste", { clipboardData: text });
  field.dispatchEvent(inField);
  assert.equal(messages.length, 1, "a text paste into a field is no mistake");
  assert.equal(inField.defaultPrevented, false);
  root.dispatchEvent(new FakeEvent("paste", { clipboardData: null }));
  assert.equal(messages.length, 2);
  editor.dispose();
});

test("defect: the Suggest corners failure message is capitalised", async () => {
  const model = fakeModel();
  let n = 0;
  const editor = createQueryEditor({ model, id: "t", nextRequest: () => `r${++n}` });
  // A chosen photo with a bitmap, as the browser makes it.
  globalThis.createImageBitmap = async () => ({ width: 400, height: 300, close() {} });
  editor.choose({ name: "photo.jpg", type: "image/jpeg", arrayBuffer: async () => new ArrayBuffer(8) }, "photo.jpg");
  await settle();
  await settle();
  editor.el.querySelector('[data-testid="suggest-button"]').click();
  await settle();
  await settle();
  const sent = model.sent.find((m) => m.content.type === "suggest_corners");
  assert.ok(sent, "the suggestion was asked for");
  editor.onCornersMessage({ type: "corners", request: sent.content.request, corners: null, message: "no papyrus outline found on the photo: click its corners." });
  assert.equal(editor.el.byTestId("corner-hint").textContent, "No papyrus outline found on the photo: click its corners.");
  editor.dispose();
  delete globalThis.createImageBitmap;
});

test("results: one card per hit, count, selection", () => {
  const model = fakeModel({ results: HITS });
  const opened = [];
  const results = createResults({ model, onOpen: (i) => opened.push(i) });
  results.update();
  assert.equal(results.el.querySelectorAll('[data-testid="result-card"]').length, 2);
  assert.equal(results.bar.byTestId("results-count").textContent, "2 results");
  results.el.querySelector('[data-testid="result-open"][data-index="1"]').click();
  assert.deepEqual(opened, [1]);
  results.select(1);
  assert.ok(results.el.children[1].classList.contains("papyrus-card-selected"));
  model.update({ results: [] });
  results.update();
  assert.equal(results.el.hidden, true);
  results.dispose();
});

test("history: the entry on show is pressed, and after Cancel the kernel's history_id presses it again", () => {
  const entries = [
    { id: "a", name: "one.jpg", count: 8 },
    { id: "b", name: "two.jpg", count: 8 },
  ];
  const model = fakeModel({ history: entries, history_previews: [], history_id: "b" });
  const restored = [];
  const history = createHistory({ model, onRestore: (id) => restored.push(id) });
  history.update();
  const pressed = () => history.el.querySelectorAll('[data-testid="history-item"]').map((b) => b.getAttribute("aria-pressed")).join(" ");
  assert.equal(pressed(), "false true");
  model.update({ history_id: "" }); // a new search runs
  history.update();
  assert.equal(pressed(), "false false");
  model.update({ history_id: "b" }); // it was cancelled: widget.py brings back the entry on show before
  history.update();
  assert.equal(pressed(), "false true");
  history.setBusy(true);
  history.el.querySelector('[data-testid="history-item"]').click();
  assert.deepEqual(restored, [], "no restore while a search runs");
  history.setBusy(false);
  history.el.querySelector('[data-testid="history-item"]').click();
  assert.deepEqual(restored, ["a"]);
  history.dispose();
});

test("export: buttons follow the results; the JSON carries the entry's search settings", () => {
  const model = fakeModel({ results: HITS, history: [{ id: "x", k: 2, filters: { place: "Hermopolis" }, corners: null }], history_id: "x", query_name: "q.jpg" });
  const exporter = createExport({ model });
  exporter.update();
  assert.equal(exporter.el.byTestId("export-csv").disabled, false);
  assert.deepEqual(exportMeta(model), { query: "q.jpg", elapsed: null, k: 2, filters: { place: "Hermopolis" }, corners: null });
  model.update({ results: [] });
  exporter.update();
  assert.equal(exporter.el.byTestId("export-json").disabled, true);
  exporter.dispose();
});

test("compare: shows a hit, asks for its large image, steps and closes", () => {
  const model = fakeModel({ results: HITS });
  let n = 0;
  const results = createResults({ model });
  results.update();
  const compare = createCompare({ model, id: "t", nextRequest: () => `r${++n}`, grid: results });
  compare.show(0, false);
  assert.equal(compare.isOpen(), true);
  assert.equal(compare.el.hidden, false);
  assert.match(compare.el.querySelector("h3").textContent, /^#1 P\.Heid\. inv\. G 107/);
  assert.deepEqual(model.sent.at(-1).content, { type: "preview", request: "r1", key: "a" });
  assert.equal(compare.el.byTestId("evidence").dataset.kind, "unverified");
  compare.onResults([HITS[0]]); // still there
  assert.equal(compare.index(), 0);
  compare.close(false);
  assert.equal(compare.el.hidden, true);
  compare.dispose();
  results.dispose();
});
