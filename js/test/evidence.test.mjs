// The evidence drawing of the compare view: layout, coordinate mapping, captions. Run: node --test js/test/
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import {
  EVIDENCE_LAYERS,
  EVIDENCE_MIN_INLIERS,
  drawEvidenceScene,
  drawRegion,
  evidenceLayout,
  evidenceLines,
  evidenceOf,
  evidenceScene,
  pointToRect,
  regionOnRect,
  validSize,
} from "../src/evidence.js";

const close = (a, b, eps = 1e-9) => assert.ok(Math.abs(a - b) <= eps, `${a} ≉ ${b}`);

test("validSize accepts two positive numbers only", () => {
  assert.deepEqual(validSize([640, 480]), [640, 480]);
  assert.deepEqual(validSize(["640", "480"]), [640, 480]);
  for (const bad of [null, undefined, [], [640], [0, 480], [640, -1], [NaN, 3], "640x480", [1, 2, 3]]) {
    assert.equal(validSize(bad), null, JSON.stringify(bad));
  }
});

test("evidenceLayout puts both images at one height, side by side, within the box", () => {
  // query 1000 × 2000 (aspect 0.5), reference 3000 × 1000 (aspect 3): 0.5 h + 12 + 3 h <= 712 → h = 200
  const layout = evidenceLayout([1000, 2000], [3000, 1000], 712, 380, 12);
  close(layout.query.height, 200);
  close(layout.reference.height, 200);
  close(layout.query.width, 100);
  close(layout.reference.width, 600);
  close(layout.reference.x, 112);
  assert.equal(layout.query.x, 0);
  assert.equal(layout.width, 712);
  assert.equal(layout.height, 200);
  // Aspect ratios are kept.
  close(layout.query.width / layout.query.height, 1000 / 2000);
  close(layout.reference.width / layout.reference.height, 3000 / 1000);
});

test("evidenceLayout is limited by the height when the box is wide", () => {
  const layout = evidenceLayout([800, 800], [600, 900], 5000, 300, 10);
  assert.equal(layout.height, 300);
  close(layout.query.width, 300);
  close(layout.reference.width, 200);
  assert.ok(layout.width <= 5000);
});

test("pointToRect maps pixel centres (OpenCV convention) onto the drawn image", () => {
  const rect = { x: 100, y: 10, width: 200, height: 100 };
  // A 2 × 1 image drawn 100× larger: pixel 0's centre at 50, pixel 1's at 150 (plus the offsets).
  assert.deepEqual(pointToRect(0, 0, [2, 1], rect), [150, 60]);
  assert.deepEqual(pointToRect(1, 0, [2, 1], rect), [250, 60]);
  // The image's corners (pixel edges -0.5 and w - 0.5) land on the rectangle's corners.
  assert.deepEqual(pointToRect(-0.5, -0.5, [2, 1], rect), [100, 10]);
  assert.deepEqual(pointToRect(1.5, 0.5, [2, 1], rect), [300, 110]);
});

test("evidenceLines scale each side by its own stored size", () => {
  const querySize = [2048, 1536]; // the uploaded photo as stored
  const referenceSize = [4000, 3000]; // the stored original
  const layout = evidenceLayout(querySize, referenceSize, 812, 300, 12);
  const lines = evidenceLines(
    [
      [1023.5, 767.5, 1999.5, 1499.5], // the centres of both images
      [-0.5, -0.5, 3999.5, 2999.5], // query's top-left corner, reference's bottom-right corner
    ],
    querySize,
    referenceSize,
    layout,
  );
  assert.equal(lines.length, 2);
  const q = layout.query;
  const r = layout.reference;
  close(lines[0].query[0], q.x + q.width / 2);
  close(lines[0].query[1], q.y + q.height / 2);
  close(lines[0].reference[0], r.x + r.width / 2);
  close(lines[0].reference[1], r.y + r.height / 2);
  close(lines[1].query[0], q.x);
  close(lines[1].query[1], q.y);
  close(lines[1].reference[0], r.x + r.width);
  close(lines[1].reference[1], r.y + r.height);
});

test("evidenceLines leaves out malformed pairs and points outside their image", () => {
  const layout = evidenceLayout([100, 100], [100, 100], 400, 200);
  const lines = evidenceLines(
    [[10, 10, 20, 20], [10, 10, 20], null, [10, "x", 20, 20], [150, 10, 20, 20], [10, 10, 20, 120], [99.5, 99.5, 0, 0]],
    [100, 100],
    [100, 100],
    layout,
  );
  assert.equal(lines.length, 2);
  assert.deepEqual(evidenceLines([[1, 1, 1, 1]], null, [100, 100], layout), []);
  assert.deepEqual(evidenceLines("no", [100, 100], [100, 100], layout), []);
});

test("evidenceOf: the caption follows the kernel's confirmed decision", () => {
  const matches = Array.from({ length: 50 }, (_, i) => [i, i, i, i]);
  const sizes = { query_size: [640, 480], reference_size: [1000, 800] };
  const confirmed = evidenceOf({ confirmed: true, inliers: 186, matches, ...sizes });
  assert.equal(confirmed.kind, "confirmed");
  assert.ok(confirmed.drawable);
  assert.equal(
    confirmed.caption,
    "Confirmed: 186 matching keypoints agree on one geometry (the best 50 drawn): the same papyrus is in the photo.",
  );
  const all = evidenceOf({ confirmed: true, inliers: 37, matches: matches.slice(0, 37), ...sizes });
  assert.equal(all.caption, "Confirmed: 37 matching keypoints agree on one geometry: the same papyrus is in the photo.");

  // Many inliers, but the kernel did not confirm (bunched on a small part, e.g. a shared colour chart).
  const bunched = evidenceOf({ confirmed: false, inliers: 40, matches: matches.slice(0, 40), ...sizes });
  assert.equal(bunched.kind, "weak");
  assert.ok(bunched.drawable, "unconfirmed evidence is still drawn, with a caption that says what it is worth");
  assert.match(bunched.caption, /^Not confirmed: 40 matching keypoints agree on one geometry: too few, or on too small a part/);

  const near = evidenceOf({ confirmed: false, near_miss: true, inliers: 34, matches: matches.slice(0, 34), ...sizes });
  assert.equal(near.kind, "weak");
  assert.match(near.caption, /^Not confirmed: 34 matching keypoints agree on one geometry: nearly enough .*\(a near miss: compare the two\)\.$/);
  const weak = evidenceOf({ confirmed: false, inliers: EVIDENCE_MIN_INLIERS, matches: matches.slice(0, 12), ...sizes });
  assert.equal(weak.kind, "weak");
  assert.match(weak.caption, /^Not confirmed: 12 matching keypoints agree on one geometry: no more than chance/);

  const none = evidenceOf({ confirmed: false, inliers: 0, matches: [], ...sizes });
  assert.equal(none.kind, "none");
  assert.equal(none.drawable, false);
  assert.equal(none.caption, "Not confirmed: no matching keypoints agree on one geometry.");

  for (const hit of [{}, { inliers: null, matches: [] }, null]) {
    const ev = evidenceOf(hit);
    assert.equal(ev.kind, "unverified");
    assert.equal(ev.drawable, false);
    assert.match(ev.caption, /^Not verified/);
  }
  // A hit dict without `confirmed` (an older kernel): the inlier threshold decides.
  assert.equal(evidenceOf({ inliers: 37, matches, ...sizes }).kind, "confirmed");
  assert.equal(evidenceOf({ inliers: EVIDENCE_MIN_INLIERS, matches, ...sizes }).kind, "weak");
  // Matches without the sizes they refer to cannot be drawn (nothing to scale them by).
  assert.equal(evidenceOf({ confirmed: true, inliers: 40, matches }).drawable, false);
});

test("regionOnRect: the region found, from the photo's pixels onto the drawn photo", () => {
  const rect = { x: 10, y: 20, width: 200, height: 100 };
  const points = regionOnRect([[0, 0], [400, 0], [400, 200], [-40, 220]], [400, 200], rect);
  assert.deepEqual(points, [[10, 20], [210, 20], [210, 120], [-10, 130]], "points past the edge stay (the layer clips)");
  for (const bad of [null, [], [[0, 0], [1, 0], [1, 1]], [[0, 0], [1, 0], [1, "x"], [0, 1]], [[0, 0], [1, 0], [1, 1], [0]]]) {
    assert.equal(regionOnRect(bad, [400, 200], rect), null, JSON.stringify(bad));
  }
  assert.equal(regionOnRect([[0, 0], [1, 0], [1, 1], [0, 1]], null, rect), null);
});

test("the region is one more evidence layer, drawn for confirmed hits only", () => {
  assert.ok(EVIDENCE_LAYERS.includes(drawRegion));
  const hit = {
    confirmed: true,
    region: [[100, 50], [300, 60], [290, 250], [90, 240]],
    query_size: [400, 300],
    reference_size: [800, 600],
    matches: [[150, 100, 100, 100]],
  };
  const scene = evidenceScene(hit, { query: {}, reference: {} }, 712, 380);
  assert.equal(scene.region.length, 4);
  close(scene.region[0][0], (100 / 400) * scene.layout.query.width);
  close(scene.region[2][1], (250 / 300) * scene.layout.query.height);
  assert.equal(evidenceScene({ ...hit, confirmed: false }, {}, 712, 380).region, null);
  assert.equal(evidenceScene({ ...hit, region: null }, {}, 712, 380).region, null);

  // Drawn after the images, before the match lines; clipped to the query photo.
  const calls = [];
  const ctx = new Proxy({}, { get: (_t, name) => (...args) => calls.push([name, ...args]), set: () => true });
  drawEvidenceScene(ctx, scene);
  const names = calls.map((c) => c[0]);
  assert.ok(names.indexOf("clip") > names.lastIndexOf("drawImage"), "the region lies on the photo");
  assert.ok(names.indexOf("clip") < names.indexOf("arc"), "the match lines lie on the region");
  const clipRect = calls.find((c) => c[0] === "rect");
  assert.deepEqual(clipRect.slice(1), [scene.layout.query.x, scene.layout.query.y, scene.layout.query.width, scene.layout.query.height]);
  calls.length = 0;
  drawRegion(ctx, { layout: scene.layout, region: null });
  assert.equal(calls.length, 0);
});

test("EVIDENCE_MIN_INLIERS is retrieval.confirm.MIN_INLIERS", () => {
  const source = readFileSync(new URL("../../papyrus_widgets/retrieval/confirm.py", import.meta.url), "utf8");
  const m = source.match(/^MIN_INLIERS = (\d+)$/m);
  assert.ok(m, "confirm.py defines MIN_INLIERS");
  assert.equal(EVIDENCE_MIN_INLIERS, Number(m[1]));
});
