// Corner ordering, coordinate scaling and the perspective maths of js/src/. Run: node --test js/test/
import assert from "node:assert/strict";
import { test } from "node:test";

import { downscaledName } from "../src/editor.js";
import { applyHomography, clientToImage, cornersProblem, deskewSize, fitBox, fitWithin, homography, imageToClient, nearestCorner, orderCorners, regionToCorners, scalePoints, warpQuad } from "../src/geometry.js";

const close = (a, b, eps = 1e-6) => assert.ok(Math.abs(a - b) <= eps, `${a} ≉ ${b}`);
const closePts = (a, b, eps = 1e-6) => {
  assert.equal(a.length, b.length);
  a.forEach((p, i) => {
    close(p[0], b[i][0], eps);
    close(p[1], b[i][1], eps);
  });
};

function permutations(items) {
  if (items.length <= 1) return [items];
  return items.flatMap((x, i) => permutations([...items.slice(0, i), ...items.slice(i + 1)]).map((rest) => [x, ...rest]));
}

test("orderCorners: every order of a square gives TL, TR, BR, BL (as imaging.order_corners)", () => {
  const square = [
    [10, 10],
    [190, 10],
    [190, 190],
    [10, 190],
  ];
  for (const perm of permutations(square)) assert.deepEqual(orderCorners(perm), square);
});

test("orderCorners: a perspective quadrilateral and a rotated one", () => {
  const quad = [
    [420, 380],
    [2150, 520],
    [2300, 2750],
    [300, 2600],
  ];
  for (const perm of permutations(quad)) assert.deepEqual(orderCorners(perm), quad);
  // A diamond: x + y ties between the top and the left point; the first one clockwise from the
  // top (angle -90°) wins, as with numpy's argmin in imaging.order_corners.
  const diamond = [
    [100, 0],
    [200, 100],
    [100, 200],
    [0, 100],
  ];
  assert.deepEqual(orderCorners([diamond[2], diamond[0], diamond[3], diamond[1]]), diamond);
});

test("orderCorners matches the Python rule on numbers given as strings", () => {
  assert.deepEqual(
    orderCorners([
      ["5", "5"],
      ["0", "5"],
      ["5", "0"],
      ["0", "0"],
    ]),
    [
      [0, 0],
      [5, 0],
      [5, 5],
      [0, 5],
    ],
  );
});

test("cornersProblem: the checks of imaging.order_corners", () => {
  const ok = [
    [0, 0],
    [500, 0],
    [500, 500],
    [0, 500],
  ];
  assert.equal(cornersProblem(ok, [1000, 1000]), null);
  assert.match(cornersProblem(ok.slice(0, 3)), /four corners/);
  assert.match(
    cornersProblem([
      [0, 0],
      [100, 100],
      [200, 200],
      [300, 300],
    ]),
    /one line/,
  );
  assert.match(
    cornersProblem([
      [0, 0],
      [800, 0],
      [800, 800],
      [700, 100],
    ]),
    /convex/,
  );
  assert.match(
    cornersProblem(
      [
        [10, 10],
        [15, 10],
        [15, 15],
        [10, 15],
      ],
      [2000, 2000],
    ),
    /too small/,
  );
  assert.match(
    cornersProblem([
      [0, 0],
      [500, 0],
      [Number.NaN, 500],
      [0, 500],
    ]),
    /not a number/,
  );
  // A "self-intersecting" click order is fine: the corners are ordered first.
  assert.equal(cornersProblem([ok[0], ok[2], ok[1], ok[3]]), null);
});

test("fitWithin: small images go as they are; large ones to the long side", () => {
  assert.deepEqual(fitWithin(1086, 1882, 2048), { width: 1086, height: 1882, scaleX: 1, scaleY: 1, downscaled: false });
  assert.deepEqual(fitWithin(2048, 1000, 2048).downscaled, false);
  const phone = fitWithin(4032, 3024, 2048); // 12 MP phone photo
  assert.equal(phone.width, 2048);
  assert.equal(phone.height, 1536);
  assert.equal(phone.downscaled, true);
  close(phone.scaleX, 2048 / 4032);
  close(phone.scaleY, 1536 / 3024);
  const tall = fitWithin(6000, 8000, 2048); // 48 MP, portrait
  assert.equal(tall.height, 2048);
  assert.equal(tall.width, 1536);
  const odd = fitWithin(2600, 3000, 2048);
  assert.equal(odd.height, 2048);
  assert.equal(odd.width, Math.round(2600 * (2048 / 3000)));
  assert.equal(fitWithin(5000, 100, 0).downscaled, false, "max_side 0 or missing: no downscaling");
});

test("scaling maths: display → original → downscaled and back", () => {
  // A 4032 × 3024 photo shown at 560 × 420 css px, placed at (100, 50) on the page.
  const rect = { left: 100, top: 50, width: 560, height: 420 };
  const [x, y] = clientToImage(100 + 280, 50 + 105, rect, 4032, 3024);
  close(x, 2016);
  close(y, 756);
  closePts([imageToClient(x, y, rect, 4032, 3024)], [[380, 155]]);
  // Off the canvas (dragged outside): clamped to the image.
  assert.deepEqual(clientToImage(0, 1000, rect, 4032, 3024), [0, 3024]);
  // The corner as sent with a 2048 px downscaled copy, and back.
  const fit = fitWithin(4032, 3024, 2048);
  const [sent] = scalePoints([[x, y]], fit.scaleX, fit.scaleY);
  close(sent[0], 1024);
  close(sent[1], 384);
  const [back] = scalePoints([sent], 1 / fit.scaleX, 1 / fit.scaleY);
  close(back[0], x);
  close(back[1], y);
  // Not downscaled: the corners go unchanged.
  assert.deepEqual(scalePoints([[12.5, 7]], 1, 1), [[12.5, 7]]);
});

test("fitBox: never enlarges, keeps the aspect", () => {
  assert.deepEqual(fitBox(100, 50, 560, 440), { width: 100, height: 50, scale: 1 });
  const big = fitBox(1775, 2048, 560, 440);
  assert.equal(big.height, 440);
  assert.equal(big.width, Math.round(1775 * (440 / 2048)));
});

test("nearestCorner: within the radius, nearest first", () => {
  const pts = [
    [10, 10],
    [100, 10],
    [14, 12],
  ];
  assert.equal(nearestCorner(pts, [13, 12], 5), 2);
  assert.equal(nearestCorner(pts, [60, 60], 5), -1);
  assert.equal(nearestCorner([], [0, 0], 5), -1);
});

test("homography maps the four points and deskewSize is the Python rule", () => {
  const src = [
    [0, 0],
    [300, 0],
    [300, 400],
    [0, 400],
  ];
  const dst = [
    [420, 380],
    [2150, 520],
    [2300, 2750],
    [300, 2600],
  ];
  const hm = homography(src, dst);
  src.forEach(([x, y], i) => closePts([applyHomography(hm, x, y)], [dst[i]], 1e-6));
  assert.throws(() => homography(src, [dst[0], dst[0], dst[0], dst[0]]));
  const size = deskewSize(dst);
  close(size.width, Math.max(Math.hypot(1730, 140), Math.hypot(2000, 150)));
  close(size.height, Math.max(Math.hypot(120, 2220), Math.hypot(150, 2230)));
});

test("warpQuad: a red rectangle inside a tilted blue one comes out upright", () => {
  // 40 × 40 source: blue background, red in x 10..29, y 10..29
  const width = 40;
  const height = 40;
  const data = new Uint8ClampedArray(width * height * 4);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = (y * width + x) * 4;
      const red = x >= 10 && x < 30 && y >= 10 && y < 30;
      data.set(red ? [255, 0, 0, 255] : [0, 0, 255, 255], i);
    }
  }
  const out = warpQuad(
    { data, width, height },
    [
      [10, 10],
      [30, 10],
      [30, 30],
      [10, 30],
    ],
    8,
    8,
  );
  assert.equal(out.length, 8 * 8 * 4);
  for (let i = 0; i < 64; i++) assert.deepEqual([...out.slice(i * 4, i * 4 + 4)], [255, 0, 0, 255]);
});

test("downscaledName: a .jpg under the same stem", () => {
  assert.equal(downscaledName("IMG_2041.HEIC.png"), "IMG_2041.HEIC.jpg");
  assert.equal(downscaledName("photo.jpeg"), "photo.jpg");
  assert.equal(downscaledName("noext"), "noext.jpg");
  assert.equal(downscaledName(""), "image.jpg");
});

test("regionToCorners: the region found, from the pixels the kernel stored to the photo shown", () => {
  // Sent as it is: the kernel's pixels are the photo's.
  assert.deepEqual(regionToCorners([[100, 50], [300, 60], [290, 250], [90, 240]], [400, 300], [400, 300]), [[100, 50], [300, 60], [290, 250], [90, 240]]);
  // Downscaled before sending (4000 × 3000 sent as 2048 × 1536): scaled back up to the photo shown,
  // and the same as the corners a search sends scaled back (scalePoints with 1 / fitWithin's scale).
  const fit = fitWithin(4000, 3000, 2048);
  const region = [[512, 384], [1536, 400], [1500, 1200], [500, 1100]];
  const corners = regionToCorners(region, [fit.width, fit.height], [4000, 3000]);
  const back = scalePoints(region, 1 / fit.scaleX, 1 / fit.scaleY);
  corners.forEach(([x, y], i) => {
    close(x, back[i][0]);
    close(y, back[i][1]);
  });
  close(corners[0][0], 1000);
  close(corners[2][1], 2343.75);
  // A region reaching past the photo's edge: each corner clipped to the photo.
  assert.deepEqual(regionToCorners([[-12.5, -3], [2100, 10], [2060.2, 1600], [5, 1540]], [2048, 1536], [2048, 1536]), [
    [0, 0],
    [2048, 10],
    [2048, 1536],
    [5, 1536],
  ]);
  // Malformed regions and sizes give nothing.
  for (const [r, q, img] of [
    [null, [10, 10], [10, 10]],
    [[[0, 0], [1, 0], [1, 1]], [10, 10], [10, 10]],
    [[[0, 0], [1, 0], [1, NaN], [0, 1]], [10, 10], [10, 10]],
    [[[0, 0], [1, 0], [1, 1], [0, 1]], null, [10, 10]],
    [[[0, 0], [1, 0], [1, 1], [0, 1]], [10, 0], [10, 10]],
    [[[0, 0], [1, 0], [1, 1], [0, 1]], [10, 10], [0, 10]],
  ]) {
    assert.equal(regionToCorners(r, q, img), null, JSON.stringify([r, q, img]));
  }
});
