// The parts of the view (js/src/*.js) built on a stand-in DOM (fakedom.mjs), and the defects
// found when the widget was tried as a new user would. Run: node --test js/test/
import assert from "node:assert/strict";
import { test } from "node:test";

import { createCompare } from "../src/compare.js";
import { NO_IMAGE_MESSAGE, createControls } from "../src/controls.js";
import { capitalise, h } from "../src/dom.js";
import { DECODE_TIMEOUT_MS, PASTE_NO_IMAGE_MESSAGE, createQueryEditor, isTextField, pastedImageFile } from "../src/editor.js";
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

test("stage line: the verdict shows under the status, plain when nothing is confirmed, and not while a search runs (but for its first look's answer)", () => {
  const model = fakeModel({ status: { state: "done", stage: "done", elapsed: 2 } });
  const stages = createStageLine({ model });
  const verdict = stages.el.byTestId("verdict");
  stages.update();
  assert.equal(verdict.hidden, true, "no verdict before a search");
  model.update({ verdict: "no confirmed match in this collection: the hits below are only similar (no reference's keypoints agree)." });
  stages.update();
  assert.equal(verdict.hidden, false);
  assert.match(verdict.textContent, /^No confirmed match in this collection/);
  assert.equal(verdict.dataset.kind, "none");
  assert.equal(verdict.getAttribute("role"), "status");
  model.update({ status: { state: "running", stage: "preparing", elapsed: 0 } });
  stages.onStatusChange();
  assert.equal(verdict.hidden, true, "a running search has no verdict yet");
  // … but while its second look runs, the first look's answer is on show, and says so
  model.update({ status: { state: "running", stage: "verifying", elapsed: 1 }, verdict: "so far, a second look running: no confirmed match in this collection: …" });
  stages.onStatusChange();
  assert.equal(verdict.hidden, false);
  assert.equal(verdict.dataset.kind, "interim");
  assert.match(verdict.textContent, /^So far, a second look running: no confirmed match/);
  model.update({ status: { state: "done", stage: "done", elapsed: 3 }, verdict: "confirmed: P.Heid. inv. G 24, 186 keypoints agree on one geometry." });
  stages.onStatusChange();
  assert.equal(verdict.textContent, "Confirmed: P.Heid. inv. G 24, 186 keypoints agree on one geometry.");
  assert.equal(verdict.dataset.kind, "confirmed");
  stages.dispose();
});

test("results and compare: the badge on each card and the caption follow the kernel's `confirmed`", () => {
  const hits = [
    { ...HITS[0], score: 0.93, confirmed: true, inliers: 186, matches: [[1, 1, 1, 1]], query_size: [400, 300], reference_size: [800, 600] },
    { ...HITS[1], score: 0.2, confirmed: false, inliers: 30, matches: [[1, 1, 1, 1]], query_size: [400, 300], reference_size: [800, 600] },
  ];
  const model = fakeModel({ results: hits });
  let n = 0;
  const results = createResults({ model });
  results.update();
  const badges = results.el.querySelectorAll('[data-testid="result-badge"]');
  assert.deepEqual(badges.map((b) => b.textContent), ["✓ Confirmed", "Similar"]);
  assert.deepEqual(results.el.querySelectorAll('[data-testid="result-card"]').map((c) => c.dataset.confirmed), ["true", "false"]);
  const compare = createCompare({ model, id: "t", nextRequest: () => `r${++n}`, grid: results });
  compare.show(0, false);
  assert.equal(compare.el.querySelector("h3").textContent, "#1 P.Heid. inv. G 107 — Confirmed — score 0.930");
  assert.match(compare.el.byTestId("evidence-caption").textContent, /^Confirmed: 186 matching keypoints agree on one geometry/);
  assert.equal(compare.el.byTestId("evidence").dataset.kind, "confirmed");
  compare.show(1, false);
  assert.match(compare.el.byTestId("evidence-caption").textContent, /^Not confirmed: 30 matching keypoints/);
  assert.equal(compare.el.byTestId("evidence").dataset.kind, "weak");
  compare.dispose();
  results.dispose();
});

async function renderWithPhoto(width, height, values = {}) {
  globalThis.createImageBitmap = async () => ({ width, height, close() {} });
  const model = fakeModel(values);
  const el = h("div");
  const dispose = render({ model, el });
  await settle();
  el.byTestId("file-input").files = [{ name: "photo.jpg", type: "image/jpeg", arrayBuffer: async () => new ArrayBuffer(8) }];
  el.byTestId("file-input").dispatchEvent(new FakeEvent("change"));
  for (let i = 0; i < 4; i++) await settle();
  return { model, el, dispose };
}

/** The kernel's answer to the search the view sent: a new history entry and its hits, in one message. */
function answer(model, hits, { corners = null, id = "h1", verdict = "" } = {}) {
  const sent = model.sent.filter((m) => m.content.type === "search").at(-1);
  model.emit({ type: "ack", request: sent.content.request, ok: true });
  model.update({
    status: { state: "done", stage: "done", elapsed: 1 },
    results: hits,
    verdict,
    history: [...model.get("history"), { id, name: "photo.jpg", corners, count: hits.length }],
    history_id: id,
  });
}

test("region found: a search without corners offers the top confirmed hit's region as corners; Search again sends them", async () => {
  // 4000 × 3000 downscaled to 2048 × 1536 before sending: the region is in the sent image's pixels.
  const { model, el, dispose } = await renderWithPhoto(4000, 3000);
  try {
    const canvas = el.byTestId("corner-canvas");
    el.byTestId("search-button").click();
    for (let i = 0; i < 4; i++) await settle();
    const first = model.sent.find((m) => m.content.type === "search");
    assert.ok(first, "the search was sent");
    assert.equal(first.content.corners, null);
    const region = [[-20, 100], [1800, 80], [1850, 1400], [150, 1600]]; // past the photo's left and bottom edges
    answer(model, [{ ...HITS[0], confirmed: true, inliers: 186, region, query_size: [2048, 1536] }], {
      verdict: "confirmed: P.Heid. inv. G 107, 186 keypoints agree on one geometry.",
    });
    await settle();
    assert.equal(canvas.dataset.count, "4");
    assert.equal(canvas.dataset.suggested, "true");
    assert.equal(canvas.dataset.source, "region");
    const s = 4000 / 2048;
    assert.deepEqual(JSON.parse(canvas.dataset.corners), [[0, 100 * s], [1800 * s, 80 * s], [1850 * s, 1400 * s], [150 * s, 3000]].map((p) => p.map((v) => Math.round(v * 10) / 10)));
    assert.match(el.byTestId("corner-hint").textContent, /^Region found: drag the corners to adjust, then Search again/);
    assert.equal(el.byTestId("verdict").textContent, "Confirmed: P.Heid. inv. G 107, 186 keypoints agree on one geometry.");

    // Search again: the corners go in the sent image's pixels (the region, clipped).
    el.byTestId("search-button").click();
    for (let i = 0; i < 4; i++) await settle();
    const second = model.sent.filter((m) => m.content.type === "search")[1];
    assert.ok(second, "the second search was sent");
    const want = [[0, 100], [1800, 80], [1850, 1400], [150, 1536]];
    second.content.corners.forEach(([x, y], i) => {
      assert.ok(Math.abs(x - want[i][0]) < 1e-6 && Math.abs(y - want[i][1]) < 1e-6, JSON.stringify(second.content.corners));
    });
    // Its answer (a search with corners) leaves the corners as they are.
    const marked = canvas.dataset.corners;
    answer(model, [{ ...HITS[0], confirmed: true, inliers: 200, region: [[5, 5], [50, 5], [50, 50], [5, 50]], query_size: [2048, 1536] }], { id: "h2", corners: want });
    await settle();
    assert.equal(canvas.dataset.corners, marked);
  } finally {
    dispose();
    delete globalThis.createImageBitmap;
  }
});

test("region found: nothing is offered for an unconfirmed top hit, or for an entry the history held before", async () => {
  const hit = { ...HITS[0], confirmed: true, inliers: 186, region: [[10, 10], [300, 10], [300, 200], [10, 200]], query_size: [400, 300] };
  const { model, el, dispose } = await renderWithPhoto(400, 300, { history: [{ id: "old", corners: null }], history_id: "old" });
  try {
    const canvas = el.byTestId("corner-canvas");
    const search = async () => {
      el.byTestId("search-button").click();
      for (let i = 0; i < 4; i++) await settle();
    };
    // No confirmed hit: "no confirmed match", no corners.
    await search();
    answer(model, [{ ...hit, confirmed: false, region: null }], { id: "h1", verdict: "no confirmed match in this collection: the hits below are only similar." });
    await settle();
    assert.equal(canvas.dataset.count, "0");
    assert.match(el.byTestId("verdict").textContent, /^No confirmed match in this collection/);
    // The answer to an earlier search (an entry the history held before): not offered.
    await search();
    model.update({ results: [hit], history_id: "old" });
    await settle();
    assert.equal(canvas.dataset.count, "0");
  } finally {
    dispose();
    delete globalThis.createImageBitmap;
  }
});

test("a photo the browser cannot decode (HEIC) is decoded by the kernel, then shown, marked and searched as its JPEG", async () => {
  const jpeg = new Uint8Array([0xff, 0xd8, 0xff, 0xe0, 1, 2, 3, 4]);
  const decodedBy = [];
  globalThis.createImageBitmap = async (source) => {
    if (source && source.name === "IMG_0002.HEIC") throw new Error("The source image could not be decoded.");
    if (source instanceof Blob) decodedBy.push(source); // not the bitmap resized for the canvas
    return { width: 2048, height: 1536, close() {} };
  };
  const model = fakeModel();
  const el = h("div");
  const dispose = render({ model, el });
  try {
    await settle();
    const heic = { name: "IMG_0002.HEIC", type: "image/heic", arrayBuffer: async () => new Uint8Array([9, 9, 9]).buffer };
    el.byTestId("file-input").files = [heic];
    el.byTestId("file-input").dispatchEvent(new FakeEvent("change"));
    for (let i = 0; i < 4; i++) await settle();
    const asked = model.sent.filter((m) => m.content.type === "decode");
    assert.equal(asked.length, 1, "the kernel is asked to decode it");
    assert.equal(asked[0].content.name, "IMG_0002.HEIC");
    assert.deepEqual([...new Uint8Array(asked[0].buffers[0])], [9, 9, 9]);
    assert.match(el.byTestId("chosen-name").textContent, /decoding it in the kernel/);
    // A stale reply (another request) changes nothing; the right one brings the photo.
    model.emit({ type: "decoded", request: asked[0].content.request + 100, message: "" }, [jpeg.buffer]);
    await settle();
    assert.equal(decodedBy.length, 0);
    model.emit({ type: "decoded", request: asked[0].content.request, message: "" }, [new DataView(jpeg.buffer)]);
    for (let i = 0; i < 4; i++) await settle();
    assert.equal(decodedBy.length, 1);
    assert.deepEqual([...new Uint8Array(await decodedBy[0].arrayBuffer())], [...jpeg]);
    const canvas = el.byTestId("corner-canvas");
    assert.equal(canvas.dataset.imageWidth, "2048");
    assert.equal(el.byTestId("chosen-name").textContent, "IMG_0002.jpg: 2048 × 1536 px (IMG_0002.HEIC, decoded by the kernel)");
    // The search sends the kernel's JPEG, under a name that says what it is.
    el.byTestId("search-button").click();
    for (let i = 0; i < 4; i++) await settle();
    const search = model.sent.find((m) => m.content.type === "search");
    assert.ok(search, "the search was sent");
    assert.equal(search.content.name, "IMG_0002.jpg");
    assert.deepEqual([...new Uint8Array(search.buffers[0])], [...jpeg]);
  } finally {
    dispose();
    delete globalThis.createImageBitmap;
  }
});

test("a photo neither the browser nor the kernel can decode says why, and is sent as it is", async () => {
  globalThis.createImageBitmap = async () => {
    throw new Error("The source image could not be decoded.");
  };
  const model = fakeModel();
  const el = h("div");
  const dispose = render({ model, el });
  try {
    await settle();
    const file = { name: "scan.tif", type: "image/tiff", arrayBuffer: async () => new Uint8Array([7, 7]).buffer };
    el.byTestId("file-input").files = [file];
    el.byTestId("file-input").dispatchEvent(new FakeEvent("change"));
    for (let i = 0; i < 4; i++) await settle();
    const asked = model.sent.find((m) => m.content.type === "decode");
    model.emit({ type: "decoded", request: asked.content.request, message: "scan.tif is not an image that can be read" }, []);
    for (let i = 0; i < 4; i++) await settle();
    assert.equal(
      el.byTestId("query-name").textContent,
      "Chosen: scan.tif (this browser cannot show it; nor could the kernel decode it: scan.tif is not an image that can be read; it is sent as it is)",
    );
    assert.equal(el.byTestId("chosen-name").textContent, "scan.tif");
    el.byTestId("search-button").click();
    for (let i = 0; i < 4; i++) await settle();
    const search = model.sent.find((m) => m.content.type === "search");
    assert.equal(search.content.name, "scan.tif");
    assert.deepEqual([...new Uint8Array(search.buffers[0])], [7, 7]);
  } finally {
    dispose();
    delete globalThis.createImageBitmap;
  }
});

test("a kernel that does not answer the decoding within DECODE_TIMEOUT_MS: the view stops waiting and says why", async (t) => {
  globalThis.createImageBitmap = async () => {
    throw new Error("The source image could not be decoded.");
  };
  const model = fakeModel();
  const el = h("div");
  const dispose = render({ model, el });
  const flush = async () => {
    for (let i = 0; i < 20; i++) await Promise.resolve();
  };
  try {
    await settle();
    t.mock.timers.enable({ apis: ["setTimeout"] });
    el.byTestId("file-input").files = [{ name: "IMG_0003.HEIC", type: "image/heic", arrayBuffer: async () => new Uint8Array([5]).buffer }];
    el.byTestId("file-input").dispatchEvent(new FakeEvent("change"));
    await flush();
    assert.equal(model.sent.filter((m) => m.content.type === "decode").length, 1);
    t.mock.timers.tick(DECODE_TIMEOUT_MS - 1);
    await flush();
    assert.match(el.byTestId("chosen-name").textContent, /decoding it in the kernel/);
    t.mock.timers.tick(1);
    await flush();
    assert.equal(
      el.byTestId("query-name").textContent,
      `Chosen: IMG_0003.HEIC (this browser cannot show it; nor could the kernel decode it: the kernel did not answer within ${DECODE_TIMEOUT_MS / 1000} s; it is sent as it is)`,
    );
  } finally {
    t.mock.timers.reset();
    dispose();
    delete globalThis.createImageBitmap;
  }
});
