// Geometry of the corner editor: corner order and checks, coordinates, perspective (pure functions).

/**
 * Four points ordered top-left, top-right, bottom-right, bottom-left — the rule of
 * imaging.order_corners: sort by angle around the centroid (clockwise on screen), then start at
 * the point with the smallest x + y.
 */
export function orderCorners(points) {
  const pts = points.map((p) => [Number(p[0]), Number(p[1])]);
  const cx = pts.reduce((a, p) => a + p[0], 0) / pts.length;
  const cy = pts.reduce((a, p) => a + p[1], 0) / pts.length;
  const sorted = pts
    .map((p) => ({ p, a: Math.atan2(p[1] - cy, p[0] - cx) }))
    .sort((a, b) => a.a - b.a)
    .map((o) => o.p);
  let start = 0;
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i][0] + sorted[i][1] < sorted[start][0] + sorted[start][1]) start = i;
  }
  return sorted.slice(start).concat(sorted.slice(0, start));
}

function polygonArea(pts) {
  let sum = 0;
  for (let i = 0; i < pts.length; i++) {
    const [x1, y1] = pts[i];
    const [x2, y2] = pts[(i + 1) % pts.length];
    sum += x1 * y2 - x2 * y1;
  }
  return Math.abs(sum) / 2;
}

/**
 * Why four points cannot deskew the photo (the checks of imaging.order_corners), or null when
 * they can. `size` = [width, height] of the image, optional.
 */
export function cornersProblem(points, size) {
  if (!Array.isArray(points) || points.length !== 4) return "mark the four corners of the papyrus.";
  const pts = points.map((p) => [Number(p[0]), Number(p[1])]);
  if (pts.some(([x, y]) => !Number.isFinite(x) || !Number.isFinite(y))) return "a corner is not a number: mark it again.";
  const ordered = orderCorners(pts);
  const xs = pts.map((p) => p[0]);
  const ys = pts.map((p) => p[1]);
  const ex = Math.max(...xs) - Math.min(...xs);
  const ey = Math.max(...ys) - Math.min(...ys);
  const area = polygonArea(ordered);
  if (area < 1e-3 * Math.max(ex * ey, 1) || Math.min(ex, ey) < 4) {
    return "the four corners are (nearly) on one line: mark the corners of the papyrus.";
  }
  if (size && area < 1e-4 * size[0] * size[1]) return "the marked area is too small: mark the four corners of the papyrus.";
  const cross = ordered.map((p, i) => {
    const q = ordered[(i + 1) % 4];
    const r = ordered[(i + 2) % 4];
    return (q[0] - p[0]) * (r[1] - q[1]) - (q[1] - p[1]) * (r[0] - q[0]);
  });
  if (!(cross.every((c) => c > 0) || cross.every((c) => c < 0))) {
    return "the corners do not form a convex quadrilateral: drag them to the papyrus' corners.";
  }
  return null;
}

/**
 * The size to send a `width` × `height` image at: unchanged when its long side is at most
 * `maxSide`, else scaled down to that long side. {width, height, scaleX, scaleY, downscaled}.
 */
export function fitWithin(width, height, maxSide) {
  const w = Math.max(1, Math.round(Number(width)));
  const h = Math.max(1, Math.round(Number(height)));
  const limit = Number(maxSide);
  if (!Number.isFinite(limit) || limit <= 0 || Math.max(w, h) <= limit) {
    return { width: w, height: h, scaleX: 1, scaleY: 1, downscaled: false };
  }
  const s = limit / Math.max(w, h);
  const outW = Math.max(1, Math.round(w * s));
  const outH = Math.max(1, Math.round(h * s));
  return { width: outW, height: outH, scaleX: outW / w, scaleY: outH / h, downscaled: true };
}

/**
 * The region a search found (a hit's `region`: four [x, y] in the pixels of the photo the kernel
 * stored, of size `querySize` = [w, h], i.e. the image the browser sent, downscaled or not) as
 * corners in the pixels of the photo shown, of size `imageSize` = [w, h]; each corner clipped to
 * the photo (the papyrus may reach past its edge). Null when the region or a size is malformed.
 */
export function regionToCorners(region, querySize, imageSize) {
  const size = (s) => {
    if (!Array.isArray(s) || s.length !== 2) return null;
    const [w, h] = s.map(Number);
    return Number.isFinite(w) && Number.isFinite(h) && w > 0 && h > 0 ? [w, h] : null;
  };
  const q = size(querySize);
  const img = size(imageSize);
  if (!q || !img || !Array.isArray(region) || region.length !== 4) return null;
  const sx = img[0] / q[0];
  const sy = img[1] / q[1];
  const out = [];
  for (const p of region) {
    if (!Array.isArray(p) || p.length !== 2) return null;
    const [x, y] = p.map(Number);
    if (!Number.isFinite(x) || !Number.isFinite(y)) return null;
    out.push([Math.min(img[0], Math.max(0, x * sx)), Math.min(img[1], Math.max(0, y * sy))]);
  }
  return out;
}

/** Points scaled by (sx, sy): image pixels → pixels of the downscaled copy, and back with 1/s. */
export function scalePoints(points, sx, sy = sx) {
  return points.map(([x, y]) => [x * sx, y * sy]);
}

/**
 * A pointer position (clientX, clientY) on an element showing the whole image stretched over
 * `rect` ({left, top, width, height}) → image pixels, clamped to the image.
 */
export function clientToImage(clientX, clientY, rect, imageWidth, imageHeight) {
  const x = ((clientX - rect.left) / rect.width) * imageWidth;
  const y = ((clientY - rect.top) / rect.height) * imageHeight;
  return [Math.min(imageWidth, Math.max(0, x)), Math.min(imageHeight, Math.max(0, y))];
}

/** Image pixels → position on the element (the inverse of clientToImage, without clamping). */
export function imageToClient(x, y, rect, imageWidth, imageHeight) {
  return [rect.left + (x / imageWidth) * rect.width, rect.top + (y / imageHeight) * rect.height];
}

/** Index of the point within `radius` of `pt` (the nearest), or -1. */
export function nearestCorner(points, pt, radius) {
  let best = -1;
  let bestD = Infinity;
  points.forEach((p, i) => {
    const d = Math.hypot(p[0] - pt[0], p[1] - pt[1]);
    if (d <= radius && d < bestD) {
      best = i;
      bestD = d;
    }
  });
  return best;
}

/** Width and height of the upright rectangle that ordered corners (TL, TR, BR, BL) deskew into. */
export function deskewSize(ordered) {
  const [tl, tr, br, bl] = ordered;
  const d = (a, b) => Math.hypot(a[0] - b[0], a[1] - b[1]);
  return { width: Math.max(d(tr, tl), d(br, bl)), height: Math.max(d(bl, tl), d(br, tr)) };
}

/**
 * The homography (9 numbers, row-major, h[8] = 1) that maps each `src[i]` onto `dst[i]`
 * (four point pairs). Throws on degenerate points.
 */
export function homography(src, dst) {
  const a = [];
  for (let i = 0; i < 4; i++) {
    const [x, y] = src[i];
    const [u, v] = dst[i];
    a.push([x, y, 1, 0, 0, 0, -u * x, -u * y, u]);
    a.push([0, 0, 0, x, y, 1, -v * x, -v * y, v]);
  }
  // Gaussian elimination with partial pivoting on the augmented 8 × 9 matrix.
  for (let col = 0; col < 8; col++) {
    let pivot = col;
    for (let r = col + 1; r < 8; r++) if (Math.abs(a[r][col]) > Math.abs(a[pivot][col])) pivot = r;
    if (Math.abs(a[pivot][col]) < 1e-12) throw new Error("degenerate corners");
    [a[col], a[pivot]] = [a[pivot], a[col]];
    for (let r = 0; r < 8; r++) {
      if (r === col) continue;
      const f = a[r][col] / a[col][col];
      if (f === 0) continue;
      for (let c = col; c < 9; c++) a[r][c] -= f * a[col][c];
    }
  }
  const h = a.map((row, i) => row[8] / row[i]);
  h.push(1);
  return h;
}

/** `h` applied to (x, y). */
export function applyHomography(h, x, y) {
  const w = h[6] * x + h[7] * y + h[8];
  return [(h[0] * x + h[1] * y + h[2]) / w, (h[3] * x + h[4] * y + h[5]) / w];
}

/**
 * Deskew: the quadrilateral `ordered` (TL, TR, BR, BL, in source pixels) of `source`
 * ({data: RGBA bytes, width, height}) warped into an upright `outWidth` × `outHeight` RGBA
 * buffer (nearest neighbour; a preview, not the searched image).
 */
export function warpQuad(source, ordered, outWidth, outHeight) {
  const out = new Uint8ClampedArray(outWidth * outHeight * 4);
  const h = homography(
    [
      [0, 0],
      [outWidth, 0],
      [outWidth, outHeight],
      [0, outHeight],
    ],
    ordered,
  );
  const { data, width, height } = source;
  for (let v = 0; v < outHeight; v++) {
    for (let u = 0; u < outWidth; u++) {
      const [sx, sy] = applyHomography(h, u + 0.5, v + 0.5);
      const x = Math.min(width - 1, Math.max(0, Math.floor(sx)));
      const y = Math.min(height - 1, Math.max(0, Math.floor(sy)));
      const si = (y * width + x) * 4;
      const oi = (v * outWidth + u) * 4;
      out[oi] = data[si];
      out[oi + 1] = data[si + 1];
      out[oi + 2] = data[si + 2];
      out[oi + 3] = 255;
    }
  }
  return out;
}

/** The display size of a `width` × `height` image inside a maxWidth × maxHeight box (never enlarged). */
export function fitBox(width, height, maxWidth, maxHeight) {
  const s = Math.min(1, maxWidth / width, maxHeight / height);
  return { width: Math.max(1, Math.round(width * s)), height: Math.max(1, Math.round(height * s)), scale: s };
}