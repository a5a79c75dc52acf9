// Pure helpers of js/src/. Run: node --test js/test/
import assert from "node:assert/strict";
import { test } from "node:test";

import widget from "../src/widget.js";
import { parseK } from "../src/controls.js";
import { safeUrl, sniffImageType, toBytes } from "../src/dom.js";
import { cardModel, formatSimilarity, hitBadge, searchVerified } from "../src/results.js";
import { STAGE_LABELS, formatSeconds, statusText } from "../src/stages.js";

test("default export is an anywidget module with render()", () => {
  assert.equal(typeof widget.render, "function");
});

test("formatSeconds: one decimal, never negative or NaN", () => {
  assert.equal(formatSeconds(1.234), "1.2 s");
  assert.equal(formatSeconds(0), "0.0 s");
  assert.equal(formatSeconds(undefined), "0.0 s");
  assert.equal(formatSeconds("2.06"), "2.1 s");
  assert.equal(formatSeconds(-3), "0.0 s");
  assert.equal(formatSeconds(Number.NaN), "0.0 s");
});

test("statusText: idle before any search", () => {
  assert.deepEqual(statusText({}), { text: "Choose a papyrus image and press Search.", kind: "idle" });
  assert.equal(statusText(null).kind, "idle");
  assert.equal(statusText(undefined).kind, "idle");
});

test("statusText: running shows the stage and elapsed seconds", () => {
  assert.deepEqual(statusText({ state: "running", stage: "embedding", elapsed: 1.23 }), {
    text: "embedding… 1.2 s",
    kind: "running",
  });
  assert.equal(statusText({ state: "running", stage: "queued", elapsed: 0 }).text, "queued… 0.0 s");
  assert.equal(statusText({ state: "running", stage: "submitting", elapsed: 0 }).text, "starting… 0.0 s");
  assert.equal(statusText({ state: "running", stage: "preparing", elapsed: 0.4 }).text, "preparing image… 0.4 s");
  assert.equal(statusText({ state: "running", stage: "something-new", elapsed: 2 }).text, "something-new… 2.0 s");
  assert.equal(statusText({ state: "running", elapsed: 2 }).text, "working… 2.0 s");
  for (const stage of ["queued", "preparing", "embedding", "searching"]) assert.ok(STAGE_LABELS[stage]);
});

test("statusText: done, cancelled", () => {
  assert.deepEqual(statusText({ state: "done", stage: "done", elapsed: 0.84 }), { text: "done in 0.8 s", kind: "done" });
  assert.deepEqual(statusText({ state: "cancelled", stage: "cancelled", elapsed: 3 }), {
    text: "cancelled after 3.0 s",
    kind: "cancelled",
  });
});

test("statusText: error shows the readable message", () => {
  const msg = "query is not an image Pillow can read: use JPEG, PNG, TIFF, WebP, BMP or GIF.";
  assert.deepEqual(statusText({ state: "error", stage: "error", elapsed: 0.1, message: msg }), { text: msg, kind: "error" });
  assert.equal(statusText({ state: "error", message: "  " }).text, "The search failed.");
  assert.equal(statusText({ state: "error" }).kind, "error");
});

test("formatSimilarity: three decimals", () => {
  assert.equal(formatSimilarity(0.97312), "0.973");
  assert.equal(formatSimilarity(1), "1.000");
  assert.equal(formatSimilarity(0), "0.000");
  assert.equal(formatSimilarity(null), "–");
  assert.equal(formatSimilarity(undefined), "–");
  assert.equal(formatSimilarity("abc"), "–");
});

test("safeUrl: only http(s)", () => {
  assert.equal(safeUrl("https://papyri.info/hgv/19331"), "https://papyri.info/hgv/19331");
  assert.equal(safeUrl("http://papyri.info/hgv/1"), "http://papyri.info/hgv/1");
  assert.equal(safeUrl("javascript:alert(1)"), null);
  assert.equal(safeUrl("data:text/html,hi"), null);
  assert.equal(safeUrl("/relative"), null);
  assert.equal(safeUrl(""), null);
  assert.equal(safeUrl(null), null);
});

test("cardModel: a full hit", () => {
  const card = cardModel({
    rank: 1,
    score: 0.97312,
    key: "19331_p_g_107",
    hgv_id: "19331",
    tm_id: "19331",
    inventory: "P.Heid. inv. G 107",
    inventory_key: "p_g_107",
    title: "Brief",
    date_text: "3. Jh. v. Chr.",
    place: "Oxyrhynchos",
    papyri_info_url: "https://papyri.info/hgv/19331",
    image_urls: [],
  });
  assert.deepEqual(card, {
    rank: 1,
    similarity: "0.973",
    inventory: "P.Heid. inv. G 107",
    inventoryKey: "p_g_107",
    title: "Brief",
    date: "3. Jh. v. Chr.",
    place: "Oxyrhynchos",
    meta: "3. Jh. v. Chr. · Oxyrhynchos",
    url: "https://papyri.info/hgv/19331",
    alt: "Thumbnail of P.Heid. inv. G 107",
    badge: null,
  });
});

test("the card badge: Confirmed for the kernel's confirmed hits, Similar for the others of a verified search", () => {
  const results = [
    { rank: 1, score: 0.93, confirmed: true, inliers: 186 },
    { rank: 2, score: 0.31, confirmed: false, inliers: 9 },
    { rank: 3, score: 0.3, confirmed: false, inliers: null }, // past the rounds the confirming stage ran
  ];
  assert.equal(searchVerified(results), true);
  const verified = searchVerified(results);
  const badges = results.map((hit, i) => cardModel(hit, i, { verified }).badge);
  assert.deepEqual(badges.map((b) => b.text), ["Confirmed", "Similar", "Similar"]);
  assert.deepEqual(badges.map((b) => b.kind), ["confirmed", "similar", "similar"]);
  assert.match(badges[0].title, /same papyrus/);
  // A near miss: not confirmed, but many keypoints agree.
  const near = cardModel({ rank: 2, score: 0.4, confirmed: false, near_miss: true, inliers: 34 }, 1, { verified: true }).badge;
  assert.deepEqual([near.text, near.kind], ["Nearly", "near"]);
  assert.match(near.title, /Not confirmed, but nearly: 34 keypoints agree/);
  // Not verified: nothing was confirmed or ruled out, so no badge.
  const unverified = [{ score: 0.9, confirmed: false, inliers: null }];
  assert.equal(searchVerified(unverified), false);
  assert.equal(cardModel(unverified[0], 0, { verified: false }).badge, null);
  assert.equal(hitBadge(null, false), null);
  assert.equal(searchVerified(null), false);
});

test("cardModel: sparse hit falls back sensibly", () => {
  const card = cardModel({ score: 0.5, inventory_key: "p_g_5", papyri_info_url: "javascript:void(0)", place: null }, 3);
  assert.equal(card.rank, 4);
  assert.equal(card.inventory, "p_g_5");
  assert.equal(card.title, "");
  assert.equal(card.meta, "");
  assert.equal(card.url, null);
  assert.equal(cardModel(null).inventory, "unknown inventory");
  assert.equal(cardModel({ rank: 0 }).rank, 0);
});

test("toBytes: DataView, ArrayBuffer, typed arrays, nothing", () => {
  const ab = new Uint8Array([1, 2, 3, 4, 5]).buffer;
  assert.deepEqual([...toBytes(new DataView(ab, 1, 3))], [2, 3, 4]);
  assert.deepEqual([...toBytes(ab)], [1, 2, 3, 4, 5]);
  assert.deepEqual([...toBytes(new Uint8Array(ab, 2))], [3, 4, 5]);
  assert.equal(toBytes(null).byteLength, 0);
  assert.equal(toBytes({}).byteLength, 0);
});

test("sniffImageType", () => {
  assert.equal(sniffImageType(new Uint8Array([0xff, 0xd8, 0xff, 0xe0])), "image/jpeg");
  assert.equal(sniffImageType(new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])), "image/png");
  assert.equal(sniffImageType(new DataView(new Uint8Array([0, 0xff, 0xd8, 0xff]).buffer, 1)), "image/jpeg");
  assert.equal(sniffImageType(new Uint8Array([1, 2])), "application/octet-stream");
});

test("parseK clamps to [1, 100] and rejects non-numbers", () => {
  assert.equal(parseK("8"), 8);
  assert.equal(parseK("0"), 1);
  assert.equal(parseK("1000"), 100);
  assert.equal(parseK("3.6"), 4);
  assert.equal(parseK(""), null);
  assert.equal(parseK("abc"), null);
});
