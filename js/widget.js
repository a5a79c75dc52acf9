// papyrus-widgets: the PapyrusSearch notebook widget (anywidget ESM, no framework, no build step).
//
// The kernel side lives in papyrus_widgets/widget.py. Traits this view reads:
//   k                 Int      number of results (two-way, bound to the "Results" input)
//   max_side          Int      long side (px) to which larger photos are downscaled here before sending
//   filters           Dict     metadata filters (two-way): date_from, date_to (years, negative = BC), place, collection
//   status            Dict     {state, stage, elapsed, message} pushed by the kernel about every second
//   results           List     hit dicts (rank, score, inventory, inventory_key, title, date_text, place, papyri_info_url, …)
//   thumbnails        List     JPEG thumbnails, one binary buffer per result, same order (arrive as DataView)
//   query_name        Unicode  name of the query image the kernel holds
//   query_preview     Bytes    JPEG of the query as searched (the deskewed crop) for the results on show
//   error             Unicode  last error message ("" when none)
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
//
// The pure helpers are named exports so `node --test js/test/` can check them without a browser.

/** Human words for the stages a search job goes through. */
export const STAGE_LABELS = {
  uploading: "uploading",
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

/** The steps the stage strip shows, in order. */
export const STEPS = [
  { id: "uploading", label: "uploading" },
  { id: "preparing", label: "preparing" },
  { id: "embedding", label: "embedding" },
  { id: "searching", label: "searching" },
  { id: "done", label: "done" },
];

const STEP_OF_STAGE = {
  uploading: 0,
  submitting: 1,
  queued: 1,
  preparing: 1,
  embedding: 2,
  searching: 3,
  verifying: 3,
  done: 4,
};

export const HELP_TEXT = [
  "Drop a photo onto this widget, paste one (Ctrl+V / ⌘V while the widget has the focus) or choose a file.",
  "Click the four corners of the papyrus on the photo, in any order, to correct the perspective; drag a corner to adjust it; " +
    "Suggest corners looks for the papyrus for you. Without corners the whole photo is searched.",
  "Enter searches; Escape closes the comparison or cancels a running search. " +
    "Searching again while a search runs cancels the running search (searches are not queued).",
  "Click a result to compare it with your query; earlier searches of this session stay in the history strip.",
];

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

// ---------------------------------------------------------------------------------------------
// The stages: the browser's own upload phase in front of the kernel's status.

/** No upload in progress, nothing to report. */
export function initialPhase() {
  return { upload: null, notice: null };
}

/**
 * The next phase after `event`:
 *   {type: "upload", request, at}            Search pressed: reading, downscaling, sending
 *   {type: "ack", request}                   the kernel took (or refused) the search: its status speaks now
 *   {type: "upload-failed", request, message, at}
 *   {type: "cancel", at}                     Cancel pressed (ends a local upload)
 *   {type: "status"}                         the kernel's status changed: local notices are stale
 * `at` is in milliseconds (performance.now() or Date.now(), one clock per view).
 */
export function reducePhase(phase, event) {
  const p = phase || initialPhase();
  switch (event && event.type) {
    case "upload":
      return { upload: { request: event.request, startedAt: event.at }, notice: null };
    case "ack":
      if (p.upload && p.upload.request === event.request) return { upload: null, notice: null };
      return p;
    case "upload-failed":
      if (p.upload && p.upload.request !== event.request) return p;
      return {
        upload: null,
        notice: { state: "error", stage: "error", elapsed: elapsedSince(p.upload, event.at), message: event.message },
      };
    case "cancel":
      if (!p.upload) return p;
      return {
        upload: null,
        notice: { state: "cancelled", stage: "cancelled", elapsed: elapsedSince(p.upload, event.at), message: "" },
      };
    case "status":
      return p.notice ? { upload: p.upload, notice: null } : p;
    default:
      return p;
  }
}

function elapsedSince(upload, at) {
  if (!upload || !Number.isFinite(at) || !Number.isFinite(upload.startedAt)) return 0;
  return Math.max(0, (at - upload.startedAt) / 1000);
}

/**
 * What the status line shows: the local upload (or its failure / cancellation) when there is one,
 * else the kernel's status with its elapsed time carried forward since it arrived (`receivedAt`)
 * while the job runs, so the seconds tick between the kernel's 1 s updates.
 */
export function viewStatus(phase, status, now, receivedAt) {
  const p = phase || initialPhase();
  if (p.upload) {
    return { state: "running", stage: "uploading", elapsed: elapsedSince(p.upload, now), message: "" };
  }
  if (p.notice) return { ...p.notice };
  const s = status && typeof status === "object" ? status : {};
  if (s.state === "running" && Number.isFinite(now) && Number.isFinite(receivedAt)) {
    const base = Number(s.elapsed);
    return { ...s, elapsed: (Number.isFinite(base) ? base : 0) + Math.max(0, (now - receivedAt) / 1000) };
  }
  return { ...s };
}

/** The stage strip for a (view) status: [{id, label, state: "done" | "current" | "todo" | "failed"}]. */
export function stageSteps(status) {
  const s = status && typeof status === "object" ? status : {};
  const todo = () => STEPS.map((step) => ({ ...step, state: "todo" }));
  if (!s.state) return todo();
  if (s.state === "done") return STEPS.map((step) => ({ ...step, state: "done" }));
  if (s.state === "running") {
    const at = STEP_OF_STAGE[s.stage] ?? 1;
    return STEPS.map((step, i) => ({ ...step, state: i < at ? "done" : i === at ? "current" : "todo" }));
  }
  // error or cancelled: the steps before the one that ended it stay done
  const at = STEP_OF_STAGE[s.lastStage] ?? -1;
  return STEPS.map((step, i) => ({
    ...step,
    state: i < at ? "done" : i === at && s.state === "error" ? "failed" : "todo",
  }));
}

// ---------------------------------------------------------------------------------------------
// Geometry: corners, coordinates, perspective

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

// ---------------------------------------------------------------------------------------------
// Evidence: the inlier matches of geometric verification drawn between query and reference

/** Inlier counts up to this are what chance agreement gives (papyrus_widgets.verify.MIN_INLIERS). */
export const EVIDENCE_MIN_INLIERS = 12;

/** `size` as [width, height] of positive finite numbers, or null. */
export function validSize(size) {
  if (!Array.isArray(size) || size.length !== 2) return null;
  const [w, h] = size.map(Number);
  return Number.isFinite(w) && Number.isFinite(h) && w > 0 && h > 0 ? [w, h] : null;
}

/**
 * The query photo and the reference side by side at one height, as large as fits in
 * maxWidth × maxHeight with `gap` between them (never enlarged past maxHeight).
 * Returns {width, height, query: rect, reference: rect}; a rect is {x, y, width, height}.
 */
export function evidenceLayout(querySize, referenceSize, maxWidth, maxHeight, gap = 12) {
  const [qw, qh] = validSize(querySize) || [1, 1];
  const [rw, rh] = validSize(referenceSize) || [1, 1];
  const qa = qw / qh;
  const ra = rw / rh;
  const height = Math.max(1, Math.min(Number(maxHeight), (Number(maxWidth) - gap) / (qa + ra)));
  const query = { x: 0, y: 0, width: qa * height, height };
  const reference = { x: query.width + gap, y: 0, width: ra * height, height };
  return { width: Math.ceil(reference.x + reference.width), height: Math.ceil(height), query, reference };
}

/**
 * A point in the pixels of an image of `size` ([w, h], the image the point was measured on)
 * → its position on `rect`, where that whole image is drawn. Keypoints are in OpenCV's
 * convention (pixel i's centre at i), the drawn image spans pixel edges 0 … w.
 */
export function pointToRect(x, y, size, rect) {
  return [rect.x + ((Number(x) + 0.5) / size[0]) * rect.width, rect.y + ((Number(y) + 0.5) / size[1]) * rect.height];
}

/**
 * Lines to draw for `matches` ([[qx, qy, rx, ry]]: query pixels of an image of `querySize`,
 * reference pixels of one of `referenceSize`) on `layout` (evidenceLayout): [{query: [x, y],
 * reference: [x, y]}]. Malformed pairs and points outside their image are left out.
 */
export function evidenceLines(matches, querySize, referenceSize, layout) {
  const qs = validSize(querySize);
  const rs = validSize(referenceSize);
  if (!qs || !rs || !Array.isArray(matches)) return [];
  const inside = (x, y, [w, h]) => x >= -0.5 && y >= -0.5 && x <= w - 0.5 && y <= h - 0.5;
  const lines = [];
  for (const m of matches) {
    if (!Array.isArray(m) || m.length !== 4) continue;
    const [qx, qy, rx, ry] = m.map(Number);
    if (![qx, qy, rx, ry].every(Number.isFinite) || !inside(qx, qy, qs) || !inside(rx, ry, rs)) continue;
    lines.push({ query: pointToRect(qx, qy, qs, layout.query), reference: pointToRect(rx, ry, rs, layout.reference) });
  }
  return lines;
}

/**
 * What the compare view says (and draws) about the verification of a hit dict:
 * {kind: "verified" | "weak" | "none" | "unverified", inliers, drawable, caption}.
 */
export function evidenceOf(hit) {
  const h = hit && typeof hit === "object" ? hit : {};
  const raw = h.inliers;
  const inliers = raw === null || raw === undefined || raw === "" ? null : Number(raw);
  const matches = Array.isArray(h.matches) ? h.matches : [];
  const drawable = Boolean(matches.length && validSize(h.query_size) && validSize(h.reference_size));
  if (inliers === null || !Number.isFinite(inliers)) {
    return { kind: "unverified", inliers: null, drawable: false, caption: "Not verified: this result was not checked by local features." };
  }
  if (inliers <= 0) {
    return { kind: "none", inliers: 0, drawable: false, caption: "Not verified: no matching keypoints agree on one geometry." };
  }
  const agree = `${inliers} matching keypoint${inliers === 1 ? " agrees" : "s agree"} on one geometry`;
  if (inliers <= EVIDENCE_MIN_INLIERS) {
    return { kind: "weak", inliers, drawable, caption: `${agree}: no more than chance gives, so not counted as evidence.` };
  }
  const drawn = drawable && matches.length < inliers ? ` (the best ${matches.length} drawn)` : "";
  return { kind: "verified", inliers, drawable, caption: `${agree}${drawn}.` };
}

// ---------------------------------------------------------------------------------------------
// Results, filters, export

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

/** The file name to send a downscaled copy under: the stem with .jpg. */
export function downscaledName(name) {
  const stem = String(name || "image").replace(/\.[^./\\]*$/, "");
  return `${stem || "image"}.jpg`;
}

/** The accessible label of a history entry. */
export function historyLabel(entry) {
  const e = entry || {};
  const parts = [`${text(e.name) || "query"}: ${Number(e.count) || 0} results`];
  if (e.top) parts.push(`best ${e.top}`);
  if (e.corners) parts.push("deskewed");
  const n = Object.keys(e.filters || {}).length;
  if (n) parts.push(`${n} filter${n === 1 ? "" : "s"}`);
  return parts.join(", ");
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

function blobUrl(bytes, urls) {
  const b = toBytes(bytes);
  if (b.byteLength === 0) return null;
  const url = URL.createObjectURL(new Blob([b], { type: sniffImageType(b) }));
  urls.push(url);
  return url;
}

function canvasToBytes(canvas, type = "image/jpeg", quality = 0.92) {
  return new Promise((resolve, reject) => {
    canvas.toBlob(
      (blob) => (blob ? blob.arrayBuffer().then(resolve, reject) : reject(new Error("the browser could not encode the image"))),
      type,
      quality,
    );
  });
}

function now() {
  return typeof performance !== "undefined" ? performance.now() : Date.now();
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
      "data-index": index,
    },
    [
      h(
        "button",
        {
          type: "button",
          class: "papyrus-thumb-frame",
          "data-testid": "result-open",
          "data-index": index,
          title: "Compare with the query",
          "aria-label": `Compare ${card.inventory} with the query`,
        },
        [image],
      ),
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

const CORNER_NAMES = ["top left", "top right", "bottom right", "bottom left"];
const CORNER_SHORT = ["TL", "TR", "BR", "BL"];
const EDITOR_MAX_WIDTH = 560;
const EDITOR_MAX_HEIGHT = 440;
const PREVIEW_BOX = 240; // css px of the live deskew preview
const QUERY_PREVIEW_SIDE = 320; // px of the crop sent with the search (history strip, compare view)
const SOURCE_SIDE = 1024; // px of the pixel copy the previews sample from
const EVIDENCE_MAX_HEIGHT = 380; // css px of the evidence drawing in the compare view

function render({ model, el }) {
  const id = `papyrus-${++uid}`;
  let requestSeq = 0;
  const nextRequest = () => `${id}-${++requestSeq}`;

  // The chosen image: {file, name, bitmap | null, width, height, corners: [[x, y]] in bitmap pixels,
  // suggested: bool, source: {data, width, height, scale} | null, prepared: Map(maxSide → Promise)}
  let chosen = null;
  let phase = initialPhase();
  let statusReceivedAt = now();
  let ticker = null;
  let drag = null; // {index, pointerId}
  let activeCorner = -1;
  let suggestPending = null; // {request, chosen, scaleX, scaleY}
  let previewPending = null; // {request, key}
  let compareIndex = -1;
  let compareReturnFocus = null;
  let resultUrls = [];
  let historyUrls = [];
  let compareUrls = [];
  let queryPreviewUrl = null;
  const queryPreviewUrls = [];
  // The query photo the evidence is drawn on (asked for once per query_image_key).
  let queryPhoto = { key: "", img: null, request: null, message: "" };
  const queryPhotoUrls = [];
  let disposed = false;
  let frameRequested = false;
  let lastRunningStage = null; // the stage an error or cancellation interrupted (for the stage strip)

  // --- controls ---------------------------------------------------------------------------
  const fileInput = h("input", {
    id: `${id}-file`,
    class: "papyrus-file",
    type: "file",
    accept: "image/*,.tif,.tiff",
    "data-testid": "file-input",
    "aria-describedby": `${id}-drop-hint`,
  });
  const dropHint = h("span", {
    id: `${id}-drop-hint`,
    class: "papyrus-drop-hint",
    text: "or drop a photo here, or paste one (Ctrl+V)",
  });
  const dropZone = h(
    "div",
    {
      class: "papyrus-field papyrus-drop",
      "data-testid": "drop-zone",
    },
    [h("label", { for: fileInput.id, text: "Papyrus image" }), fileInput, dropHint],
  );
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

  // --- corner editor -------------------------------------------------------------------------
  const cornerCanvas = h("canvas", {
    class: "papyrus-corner-canvas",
    tabindex: 0,
    role: "img",
    "data-testid": "corner-canvas",
    "aria-label": "The photo. Click the four corners of the papyrus; drag a corner to move it; arrow keys move the last corner.",
    "aria-describedby": `${id}-corner-hint`,
  });
  const previewCanvas = h("canvas", {
    class: "papyrus-preview-canvas",
    role: "img",
    "data-testid": "preview-canvas",
    "aria-label": "Deskewed preview of the marked papyrus",
  });
  const chosenLine = h("div", { class: "papyrus-chosen", "data-testid": "chosen-name" });
  const cornerHint = h("p", { id: `${id}-corner-hint`, class: "papyrus-hint", "data-testid": "corner-hint", "aria-live": "polite" });
  const suggestButton = h("button", {
    class: "papyrus-button",
    type: "button",
    "data-testid": "suggest-button",
    text: "Suggest corners",
  });
  const resetButton = h("button", {
    class: "papyrus-button",
    type: "button",
    "data-testid": "reset-button",
    text: "Reset corners",
  });
  const previewCaption = h("div", { class: "papyrus-caption", text: "Searched as" });
  const editor = h("div", { class: "papyrus-editor", "data-testid": "editor", hidden: true }, [
    h("div", { class: "papyrus-editor-photo" }, [cornerCanvas]),
    h("div", { class: "papyrus-editor-side" }, [
      chosenLine,
      h("figure", { class: "papyrus-preview" }, [previewCanvas, h("figcaption", {}, [previewCaption])]),
      cornerHint,
      h("div", { class: "papyrus-actions" }, [suggestButton, resetButton]),
    ]),
  ]);

  // --- status, history, results, compare -----------------------------------------------------
  const queryLine = h("div", { class: "papyrus-query", "data-testid": "query-name" });
  const statusLine = h("div", { class: "papyrus-status", "data-testid": "status", "aria-live": "polite" });
  const stagesList = h("ol", { class: "papyrus-stages", "data-testid": "stages", "aria-label": "Search stages" });
  const dashboardLink = h("a", {
    class: "papyrus-link papyrus-dashboard",
    "data-testid": "dashboard-link",
    target: "_blank",
    rel: "noopener noreferrer",
    text: "Dask dashboard ↗",
    title: "The Dask dashboard of the cluster that runs the searches (opens in a new tab)",
    hidden: true,
  });
  const historyList = h("ol", { class: "papyrus-history-list", "data-testid": "history" });
  const historyBox = h("nav", { class: "papyrus-history", "aria-label": "Earlier searches of this session", hidden: true }, [
    h("span", { class: "papyrus-caption", text: "History" }),
    historyList,
  ]);
  const resultsCount = h("span", { class: "papyrus-results-count", "data-testid": "results-count" });
  const exportCsv = h("button", { class: "papyrus-button", type: "button", "data-testid": "export-csv", text: "Export CSV" });
  const exportJson = h("button", { class: "papyrus-button", type: "button", "data-testid": "export-json", text: "Export JSON" });
  const resultsBar = h("div", { class: "papyrus-results-bar", hidden: true }, [
    resultsCount,
    h("div", { class: "papyrus-actions" }, [exportCsv, exportJson]),
  ]);
  const resultsList = h("ol", { class: "papyrus-results", "data-testid": "results", "aria-label": "Nearest reference papyri" });

  const compareQueryImg = h("img", { class: "papyrus-compare-img", "data-testid": "compare-query", alt: "The query as searched" });
  const compareResultImg = h("img", { class: "papyrus-compare-img", "data-testid": "compare-result", alt: "" });
  const compareQueryMissing = h("div", { class: "papyrus-thumb-missing", text: "no preview of the query" });
  const compareInfo = h("div", { class: "papyrus-compare-info", "data-testid": "compare-info" });
  const evidenceCanvas = h("canvas", {
    class: "papyrus-evidence-canvas",
    role: "img",
    "data-testid": "evidence-canvas",
    "aria-label": "The query photo (left) and the result (right); lines join keypoints that match",
  });
  const evidenceCaption = h("figcaption", { "data-testid": "evidence-caption", "aria-live": "polite" });
  const evidenceBox = h("figure", { class: "papyrus-evidence", "data-testid": "evidence" }, [evidenceCanvas, evidenceCaption]);
  const compareTitle = h("h3", { id: `${id}-compare-title`, class: "papyrus-compare-title" });
  const compareClose = h("button", { class: "papyrus-button", type: "button", "data-testid": "compare-close", text: "Close" });
  const comparePrev = h("button", { class: "papyrus-button", type: "button", "aria-label": "Previous result", text: "‹" });
  const compareNext = h("button", { class: "papyrus-button", type: "button", "aria-label": "Next result", text: "›" });
  const compareBox = h(
    "section",
    { class: "papyrus-compare", "data-testid": "compare", role: "dialog", "aria-labelledby": compareTitle.id, hidden: true },
    [
      h("div", { class: "papyrus-compare-head" }, [
        compareTitle,
        h("div", { class: "papyrus-actions" }, [comparePrev, compareNext, compareClose]),
      ]),
      h("div", { class: "papyrus-compare-body" }, [
        h("figure", {}, [h("div", { class: "papyrus-compare-frame" }, [compareQueryImg, compareQueryMissing]), h("figcaption", { text: "Query (as searched)" })]),
        h("figure", {}, [h("div", { class: "papyrus-compare-frame" }, [compareResultImg]), h("figcaption", { "data-testid": "compare-result-caption", text: "Result" })]),
      ]),
      evidenceBox,
      compareInfo,
    ],
  );

  const form = h("form", { class: "papyrus-controls", "aria-label": "Search reference papyri by image" }, [
    dropZone,
    h("div", { class: "papyrus-field papyrus-field-k" }, [h("label", { for: kInput.id, text: "Results" }), kInput]),
    h("div", { class: "papyrus-actions" }, [searchButton, cancelButton]),
    filtersBox,
    helpBox,
  ]);
  const root = h(
    "div",
    {
      class: "papyrus-search",
      // Keys typed inside the widget are the widget's: JupyterLab's notebook shortcuts skip them.
      "data-lm-suppress-shortcuts": "true",
    },
    [
      form,
      editor,
      queryLine,
      h("div", { class: "papyrus-progress" }, [statusLine, stagesList, dashboardLink]),
      historyBox,
      compareBox,
      resultsBar,
      resultsList,
    ],
  );
  el.append(root);

  // --- state helpers -------------------------------------------------------------------------
  const kernelStatus = () => model.get("status") || {};
  const isRunning = () => kernelStatus().state === "running";
  const isBusy = () => Boolean(phase.upload) || isRunning();

  function cornerState() {
    if (!chosen || !chosen.bitmap) return { ok: true, corners: null, problem: null };
    const n = chosen.corners.length;
    if (n === 0) return { ok: true, corners: null, problem: null };
    if (n < 4) return { ok: false, corners: null, problem: null };
    const problem = cornersProblem(chosen.corners, [chosen.width, chosen.height]);
    return { ok: !problem, corners: problem ? null : orderCorners(chosen.corners), problem };
  }

  function updateButtons() {
    const corners = cornerState();
    searchButton.disabled = !chosen || !corners.ok;
    cancelButton.disabled = !isBusy();
    suggestButton.disabled = !chosen || !chosen.bitmap || Boolean(suggestPending);
    suggestButton.setAttribute("aria-busy", suggestPending ? "true" : "false");
    resetButton.disabled = !chosen || !chosen.bitmap || chosen.corners.length === 0;
    const hasResults = (model.get("results") || []).length > 0;
    exportCsv.disabled = !hasResults;
    exportJson.disabled = !hasResults;
    for (const button of historyList.querySelectorAll("button")) button.disabled = isBusy();
  }

  function updateK() {
    const k = model.get("k");
    if (document.activeElement !== kInput || parseK(kInput.value) !== k) kInput.value = String(k);
  }

  function updateFilters() {
    const filters = model.get("filters") || {};
    for (const [name, input] of Object.entries(filterInputs)) {
      if (document.activeElement === input) continue;
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

  function onFilterChange() {
    const { filters, invalid } = readFilters();
    if (invalid.length) return;
    const current = model.get("filters") || {};
    if (JSON.stringify(current) !== JSON.stringify(filters)) {
      model.set("filters", filters);
      model.save_changes();
    }
    filterSummary.textContent = filtersSummary(filters);
  }

  function updateQuery() {
    const name = model.get("query_name") || "";
    queryLine.textContent = name ? `Query: ${name}` : "";
    queryLine.hidden = !name;
  }

  function currentViewStatus() {
    const kernel = kernelStatus();
    const shown = viewStatus(phase, kernel, now(), statusReceivedAt);
    if (shown.state === "error" || shown.state === "cancelled") shown.lastStage = lastRunningStage;
    return shown;
  }

  function updateStatus() {
    const shown = currentViewStatus();
    const { text: line, kind } = statusText(shown);
    if (statusLine.textContent !== line) statusLine.textContent = line;
    statusLine.dataset.state = kind;
    statusLine.dataset.stage = shown.stage || "";
    if (kind === "error") statusLine.setAttribute("role", "alert");
    else statusLine.removeAttribute("role");
    root.setAttribute("aria-busy", kind === "running" ? "true" : "false");
    const steps = stageSteps(shown);
    if (stagesList.children.length !== steps.length) {
      stagesList.replaceChildren(...steps.map((step) => h("li", { "data-step": step.id, text: step.label })));
    }
    steps.forEach((step, i) => {
      const li = stagesList.children[i];
      li.dataset.state = step.state;
      if (step.state === "current") li.setAttribute("aria-current", "step");
      else li.removeAttribute("aria-current");
    });
    stagesList.hidden = !shown.state;
    updateButtons();
    // Tick the seconds between the kernel's updates while something runs; stop otherwise.
    if (kind === "running" && ticker === null && !disposed) ticker = setInterval(updateStatus, 200);
    if (kind !== "running" && ticker !== null) {
      clearInterval(ticker);
      ticker = null;
    }
  }

  function onStatusChange() {
    statusReceivedAt = now();
    const s = kernelStatus();
    if (s.state === "running") lastRunningStage = s.stage;
    phase = reducePhase(phase, { type: "status" });
    updateStatus();
  }

  function revoke(urls) {
    for (const url of urls) URL.revokeObjectURL(url);
    urls.length = 0;
  }

  // Object URLs of replaced images are revoked a little later: an image that has just been
  // replaced may still be fetching its URL, and a revoked URL would be a console error.
  function retire(urls) {
    const old = urls.splice(0);
    if (old.length) setTimeout(() => old.forEach((url) => URL.revokeObjectURL(url)), 5000);
  }

  // Several traits change in one kernel message (results + thumbnails, the history's three
  // traits): render once, after all of them.
  const scheduled = new Set();
  function schedule(fn) {
    if (scheduled.size === 0) {
      queueMicrotask(() => {
        const fns = [...scheduled];
        scheduled.clear();
        if (!disposed) fns.forEach((f) => f());
      });
    }
    scheduled.add(fn);
  }

  // A result's thumbnail: its presigned URL when the kernel gave one, else its bytes as a blob URL.
  function thumbnailUrl(index, urls) {
    const presigned = safeUrl((model.get("thumbnail_urls") || [])[index]);
    return presigned || blobUrl((model.get("thumbnails") || [])[index], urls);
  }

  function updateDashboard() {
    const url = safeUrl(model.get("dashboard_link"));
    if (url) dashboardLink.setAttribute("href", url);
    else dashboardLink.removeAttribute("href");
    dashboardLink.hidden = !url;
  }

  function updateResults() {
    const results = model.get("results") || [];
    retire(resultUrls);
    const cards = results.map((hit, i) => renderCard(hit, i, thumbnailUrl(i, resultUrls)));
    resultsList.replaceChildren(...cards);
    resultsList.hidden = cards.length === 0;
    resultsBar.hidden = cards.length === 0;
    resultsCount.textContent = cards.length ? `${cards.length} result${cards.length === 1 ? "" : "s"}` : "";
    if (compareIndex >= 0) {
      if (compareIndex < results.length) showCompare(compareIndex, false);
      else closeCompare(false);
    }
    updateButtons();
  }

  function updateQueryPreview() {
    retire(queryPreviewUrls);
    queryPreviewUrl = blobUrl(model.get("query_preview"), queryPreviewUrls);
    if (compareIndex >= 0) setCompareQuery();
  }

  function updateHistory() {
    const entries = model.get("history") || [];
    const previews = model.get("history_previews") || [];
    const current = model.get("history_id") || "";
    retire(historyUrls);
    const items = entries.map((entry, i) => {
      const url = blobUrl(previews[i], historyUrls);
      const label = historyLabel(entry);
      const button = h(
        "button",
        {
          type: "button",
          class: "papyrus-history-item",
          "data-testid": "history-item",
          "data-id": entry.id,
          "aria-pressed": entry.id === current ? "true" : "false",
          "aria-label": label,
          title: label,
        },
        [
          url ? h("img", { src: url, alt: "" }) : h("span", { class: "papyrus-history-text", text: text(entry.name).slice(0, 12) || "query" }),
          h("span", { class: "papyrus-history-count", text: String(Number(entry.count) || 0) }),
        ],
      );
      return h("li", {}, [button]);
    });
    historyList.replaceChildren(...items);
    historyBox.hidden = items.length === 0;
    updateButtons();
  }

  // --- choosing an image ------------------------------------------------------------------------
  function choose(file, name) {
    if (!file) return;
    const mine = {
      file,
      name: name || file.name || "image",
      bitmap: null,
      width: 0,
      height: 0,
      corners: [],
      suggested: false,
      source: null,
      prepared: new Map(),
      ready: null,
    };
    if (chosen && chosen.bitmap) chosen.bitmap.close();
    if (chosen && chosen.display) chosen.display.close();
    chosen = mine;
    suggestPending = null;
    activeCorner = -1;
    chosenLine.textContent = mine.name;
    updateButtons();
    // EXIF orientation applied: corners are marked on the photo as it is meant to be seen.
    mine.ready = createImageBitmap(file, { imageOrientation: "from-image" }).then(
      (bitmap) => {
        mine.bitmap = bitmap;
      },
      () => {
        mine.bitmap = null; // e.g. TIFF: sent as it is; the kernel decodes it (or says why it cannot)
      },
    );
    mine.ready.then(() => {
      if (chosen !== mine || disposed) {
        if (mine.bitmap && chosen !== mine) mine.bitmap.close();
        return;
      }
      if (mine.bitmap) {
        mine.width = mine.bitmap.width;
        mine.height = mine.bitmap.height;
        mine.source = makeSource(mine.bitmap);
        onMaxSideChange();
        editor.hidden = false;
        layoutCanvas();
      } else {
        editor.hidden = true;
      }
      cornerCanvas.dataset.imageWidth = String(mine.width);
      cornerCanvas.dataset.imageHeight = String(mine.height);
      queryChosenNote();
      drawAll();
    });
  }

  function queryChosenNote() {
    if (!chosen) return;
    if (!chosen.bitmap) {
      cornerHint.textContent = "";
      queryLine.hidden = false;
      queryLine.textContent = `Chosen: ${chosen.name} (this browser cannot show it; it is sent as it is)`;
    } else {
      updateQuery();
    }
  }

  function makeSource(bitmap) {
    const fit = fitBox(bitmap.width, bitmap.height, SOURCE_SIDE, SOURCE_SIDE);
    const canvas = document.createElement("canvas");
    canvas.width = fit.width;
    canvas.height = fit.height;
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(bitmap, 0, 0, fit.width, fit.height);
    const image = ctx.getImageData(0, 0, fit.width, fit.height);
    return { canvas, data: image.data, width: fit.width, height: fit.height, scale: fit.width / bitmap.width };
  }

  function onFileChange() {
    const file = fileInput.files && fileInput.files.length ? fileInput.files[0] : null;
    if (file) choose(file, file.name);
    else {
      chosen = null;
      editor.hidden = true;
      updateButtons();
    }
  }

  function setInputFiles(file) {
    try {
      const dt = new DataTransfer();
      dt.items.add(file);
      fileInput.files = dt.files; // the input then names the dropped or pasted file
    } catch {
      fileInput.value = "";
    }
  }

  function imageFileFrom(list) {
    const files = Array.from(list || []);
    return files.find((f) => f.type.startsWith("image/")) || files[0] || null;
  }

  function onDragOver(event) {
    const types = event.dataTransfer ? Array.from(event.dataTransfer.types || []) : [];
    if (!types.includes("Files")) return;
    event.preventDefault();
    event.stopPropagation();
    event.dataTransfer.dropEffect = "copy";
    root.classList.add("papyrus-dragover");
  }

  function onDragLeave(event) {
    if (!event.relatedTarget || !root.contains(event.relatedTarget)) root.classList.remove("papyrus-dragover");
  }

  function onDrop(event) {
    root.classList.remove("papyrus-dragover");
    const file = event.dataTransfer ? imageFileFrom(event.dataTransfer.files) : null;
    if (!file) return;
    event.preventDefault();
    event.stopPropagation();
    setInputFiles(file);
    choose(file, file.name || "dropped-image");
  }

  function onPaste(event) {
    const data = event.clipboardData;
    if (!data) return;
    let file = imageFileFrom(Array.from(data.files || []).filter((f) => f.type.startsWith("image/")));
    if (!file) {
      const item = Array.from(data.items || []).find((it) => it.kind === "file" && it.type.startsWith("image/"));
      file = item ? item.getAsFile() : null;
    }
    if (!file) return; // text pastes into the filter fields go on as usual
    event.preventDefault();
    event.stopPropagation();
    const ext = (file.type.split("/")[1] || "png").replace("jpeg", "jpg");
    // Browsers call every pasted bitmap "image.png", whatever its type: give it a truthful name.
    const name = file.name && file.name !== "image.png" ? file.name : `pasted-image.${ext}`;
    const named = name === file.name ? file : new File([file], name, { type: file.type });
    setInputFiles(named);
    choose(named, name);
  }

  // --- the upload: downscaled in the browser when larger than max_side ---------------------------
  function prepared(mine) {
    const maxSide = model.get("max_side");
    if (!mine.prepared.has(maxSide)) {
      const promise = (async () => {
        await mine.ready;
        if (mine.bitmap) {
          const fit = fitWithin(mine.width, mine.height, maxSide);
          if (fit.downscaled) {
            const canvas = document.createElement("canvas");
            canvas.width = fit.width;
            canvas.height = fit.height;
            const ctx = canvas.getContext("2d");
            ctx.imageSmoothingQuality = "high";
            ctx.drawImage(mine.bitmap, 0, 0, fit.width, fit.height);
            const bytes = await canvasToBytes(canvas, "image/jpeg", 0.92);
            return { bytes, name: downscaledName(mine.name), scaleX: fit.scaleX, scaleY: fit.scaleY };
          }
        }
        return { bytes: await mine.file.arrayBuffer(), name: mine.name, scaleX: 1, scaleY: 1 };
      })();
      promise.catch(() => mine.prepared.delete(maxSide));
      mine.prepared.set(maxSide, promise);
    }
    return mine.prepared.get(maxSide);
  }

  async function queryPreviewBytes(mine, ordered) {
    if (!mine.bitmap || !mine.source) return null;
    const src = mine.source;
    let width;
    let height;
    let pixels;
    if (ordered) {
      const size = deskewSize(ordered);
      const fit = fitBox(size.width, size.height, QUERY_PREVIEW_SIDE, QUERY_PREVIEW_SIDE);
      width = fit.width;
      height = fit.height;
      pixels = warpQuad(src, scalePoints(ordered, src.scale), width, height);
    } else {
      const fit = fitBox(mine.width, mine.height, QUERY_PREVIEW_SIDE, QUERY_PREVIEW_SIDE);
      width = fit.width;
      height = fit.height;
    }
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    const ctx = canvas.getContext("2d");
    if (pixels) ctx.putImageData(new ImageData(pixels, width, height), 0, 0);
    else ctx.drawImage(src.canvas, 0, 0, width, height);
    return canvasToBytes(canvas, "image/jpeg", 0.85);
  }

  async function onSubmit(event) {
    event.preventDefault();
    if (!chosen || searchButton.disabled) return;
    onKChange();
    const { filters, invalid } = readFilters();
    if (invalid.length) {
      filtersBox.open = true;
      filterInputs[invalid[0]].focus();
      phase = reducePhase(reducePhase(phase, { type: "upload", request: "invalid", at: now() }), {
        type: "upload-failed",
        request: "invalid",
        at: now(),
        message: "A date filter is not a year (use whole numbers, negative for BC; from ≤ to).",
      });
      updateStatus();
      return;
    }
    onFilterChange();
    const mine = chosen;
    const corners = cornerState().corners;
    const request = nextRequest();
    lastRunningStage = "uploading";
    phase = reducePhase(phase, { type: "upload", request, at: now() });
    updateStatus();
    try {
      const upload = await prepared(mine);
      const preview = await queryPreviewBytes(mine, corners).catch(() => null);
      if (!phase.upload || phase.upload.request !== request || disposed) return; // cancelled or superseded
      const sent = corners ? scalePoints(corners, upload.scaleX, upload.scaleY) : null;
      const buffers = preview ? [upload.bytes.slice(0), preview] : [upload.bytes.slice(0)];
      model.send(
        { type: "search", request, name: upload.name, k: model.get("k"), corners: sent, filters },
        undefined,
        buffers,
      );
    } catch (err) {
      phase = reducePhase(phase, {
        type: "upload-failed",
        request,
        at: now(),
        message: `Could not read ${mine.name}: ${err && err.message ? err.message : err}. Choose the file again.`,
      });
      updateStatus();
    }
  }

  function onCancel() {
    phase = reducePhase(phase, { type: "cancel", at: now() });
    model.send({ type: "cancel" });
    updateStatus();
  }

  async function onSuggest() {
    if (!chosen || suggestPending) return;
    await chosen.ready;
    if (!chosen || !chosen.bitmap || suggestPending) return;
    const mine = chosen;
    const request = nextRequest();
    suggestPending = { request, chosen: mine, scaleX: 1, scaleY: 1 };
    cornerHint.textContent = "Looking for the papyrus on the photo…";
    updateButtons();
    try {
      const upload = await prepared(mine);
      if (!suggestPending || suggestPending.request !== request) return;
      suggestPending.scaleX = upload.scaleX;
      suggestPending.scaleY = upload.scaleY;
      model.send({ type: "suggest_corners", request, name: upload.name }, undefined, [upload.bytes.slice(0)]);
    } catch (err) {
      suggestPending = null;
      cornerHint.textContent = `Could not read the photo: ${err && err.message ? err.message : err}`;
      updateButtons();
    }
  }

  function onReset() {
    if (!chosen) return;
    chosen.corners = [];
    chosen.suggested = false;
    activeCorner = -1;
    drawAll();
    updateButtons();
  }

  function onCustomMessage(content, buffers) {
    if (!content || typeof content !== "object") return;
    if (content.type === "ack") {
      phase = reducePhase(phase, { type: "ack", request: content.request });
      updateStatus();
    } else if (content.type === "corners") {
      const pending = suggestPending;
      if (!pending || pending.request !== content.request) return;
      suggestPending = null;
      if (pending.chosen === chosen && Array.isArray(content.corners) && content.corners.length === 4) {
        chosen.corners = content.corners.map(([x, y]) => [
          Math.min(chosen.width, Math.max(0, x / pending.scaleX)),
          Math.min(chosen.height, Math.max(0, y / pending.scaleY)),
        ]);
        chosen.suggested = true;
        activeCorner = -1;
        drawAll();
      } else if (pending.chosen === chosen) {
        cornerHint.textContent = content.message || "No corners found: click the four corners of the papyrus.";
      }
      if (pending.chosen === chosen && Array.isArray(content.corners)) updateCornerHint();
      updateButtons();
    } else if (content.type === "preview") {
      const bytes = buffers && buffers.length ? toBytes(buffers[0]) : null;
      if (queryPhoto.request && queryPhoto.request === content.request) {
        queryPhoto.request = null;
        const url = bytes && bytes.byteLength ? blobUrl(bytes, queryPhotoUrls) : null;
        if (url) {
          const img = new Image();
          img.addEventListener("load", () => drawEvidence());
          img.src = url;
          queryPhoto.img = img;
        } else {
          queryPhoto.message = content.message || "the query photo could not be loaded";
          drawEvidence();
        }
        return;
      }
      if (!previewPending || previewPending.request !== content.request) return;
      previewPending = null;
      const url = safeUrl(content.url) || (bytes && bytes.byteLength ? blobUrl(bytes, compareUrls) : null);
      if (url && compareIndex >= 0) {
        const hit = (model.get("results") || [])[compareIndex];
        if (hit && hit.image_key === content.key) {
          compareResultImg.src = url;
          compareResultImg.dataset.size = "large";
        }
      }
    }
  }

  // --- canvas: layout, drawing, pointer ----------------------------------------------------------
  function layoutCanvas() {
    if (!chosen || !chosen.bitmap) return;
    // Beside the side column when there is room for both, else full width (the column wraps below).
    const width = editor.clientWidth || EDITOR_MAX_WIDTH + 240;
    const available = Math.max(160, Math.min(EDITOR_MAX_WIDTH, width >= 480 + 236 ? width - 236 : width));
    const fit = fitBox(chosen.width, chosen.height, available, EDITOR_MAX_HEIGHT);
    const dpr = window.devicePixelRatio || 1;
    cornerCanvas.style.width = `${fit.width}px`;
    cornerCanvas.style.height = `${fit.height}px`;
    cornerCanvas.width = Math.round(fit.width * dpr);
    cornerCanvas.height = Math.round(fit.height * dpr);
    chosen.display = null;
    createImageBitmap(chosen.bitmap, {
      resizeWidth: cornerCanvas.width,
      resizeHeight: cornerCanvas.height,
      resizeQuality: "high",
    }).then(
      (small) => {
        if (chosen && !disposed) {
          if (chosen.display) chosen.display.close();
          chosen.display = small;
          drawAll();
        } else small.close();
      },
      () => {},
    );
  }

  function requestDraw() {
    if (frameRequested) return;
    frameRequested = true;
    requestAnimationFrame(() => {
      frameRequested = false;
      if (!disposed) drawAll();
    });
  }

  function drawAll() {
    drawCanvas();
    drawPreview();
    updateCornerHint();
    updateButtons();
  }

  function drawCanvas() {
    if (!chosen || !chosen.bitmap) return;
    const ctx = cornerCanvas.getContext("2d");
    const w = cornerCanvas.width;
    const hgt = cornerCanvas.height;
    ctx.clearRect(0, 0, w, hgt);
    ctx.drawImage(chosen.display || chosen.bitmap, 0, 0, w, hgt);
    const s = w / chosen.width;
    const dpr = window.devicePixelRatio || 1;
    const pts = chosen.corners;
    const ordered = pts.length === 4 ? orderCorners(pts) : null;
    const state = cornerState();
    if (pts.length >= 2) {
      const path = ordered || pts;
      ctx.beginPath();
      path.forEach(([x, y], i) => (i ? ctx.lineTo(x * s, y * s) : ctx.moveTo(x * s, y * s)));
      if (ordered) ctx.closePath();
      if (ordered && state.ok) {
        ctx.fillStyle = "rgba(255, 212, 0, 0.12)";
        ctx.fill();
      }
      ctx.lineWidth = 3 * dpr;
      ctx.strokeStyle = "rgba(0, 0, 0, 0.75)";
      ctx.stroke();
      ctx.lineWidth = 1.5 * dpr;
      ctx.strokeStyle = state.problem ? "#ff5252" : chosen.suggested ? "#40c4ff" : "#ffd400";
      if (chosen.suggested) ctx.setLineDash([6 * dpr, 4 * dpr]);
      ctx.stroke();
      ctx.setLineDash([]);
    }
    pts.forEach(([x, y], i) => {
      const label = ordered ? CORNER_SHORT[ordered.findIndex((p) => p[0] === x && p[1] === y)] : String(i + 1);
      ctx.beginPath();
      ctx.arc(x * s, y * s, (i === activeCorner ? 8 : 6.5) * dpr, 0, 2 * Math.PI);
      ctx.fillStyle = chosen.suggested ? "#40c4ff" : "#ffd400";
      ctx.fill();
      ctx.lineWidth = 2 * dpr;
      ctx.strokeStyle = "#000000";
      ctx.stroke();
      ctx.font = `600 ${11 * dpr}px system-ui, sans-serif`;
      ctx.lineWidth = 3 * dpr;
      ctx.strokeStyle = "rgba(0, 0, 0, 0.85)";
      const lx = Math.min(w - 22 * dpr, x * s + 9 * dpr);
      const ly = Math.max(12 * dpr, y * s - 9 * dpr);
      ctx.strokeText(label || "", lx, ly);
      ctx.fillStyle = "#ffffff";
      ctx.fillText(label || "", lx, ly);
    });
    cornerCanvas.dataset.corners = JSON.stringify((ordered || pts).map(([x, y]) => [Math.round(x * 10) / 10, Math.round(y * 10) / 10]));
    cornerCanvas.dataset.count = String(pts.length);
    cornerCanvas.dataset.suggested = chosen.suggested ? "true" : "false";
  }

  function drawPreview() {
    if (!chosen || !chosen.bitmap || !chosen.source) return;
    const state = cornerState();
    const src = chosen.source;
    const ctx = previewCanvas.getContext("2d");
    if (state.corners) {
      const size = deskewSize(state.corners);
      const fit = fitBox(size.width, size.height, PREVIEW_BOX, PREVIEW_BOX);
      previewCanvas.width = fit.width;
      previewCanvas.height = fit.height;
      try {
        const pixels = warpQuad(src, scalePoints(state.corners, src.scale), fit.width, fit.height);
        ctx.putImageData(new ImageData(pixels, fit.width, fit.height), 0, 0);
      } catch {
        ctx.clearRect(0, 0, fit.width, fit.height);
      }
      previewCaption.textContent = "Searched as (deskewed)";
      previewCanvas.dataset.mode = "deskewed";
    } else {
      const fit = fitBox(chosen.width, chosen.height, PREVIEW_BOX, PREVIEW_BOX);
      previewCanvas.width = fit.width;
      previewCanvas.height = fit.height;
      ctx.drawImage(src.canvas, 0, 0, fit.width, fit.height);
      previewCanvas.dataset.mode = "whole";
      previewCaption.textContent = chosen.corners.length ? "Searched as (whole photo until 4 corners)" : "Searched as (whole photo)";
    }
  }

  function updateCornerHint() {
    if (!chosen || !chosen.bitmap) return;
    if (suggestPending) return;
    const n = chosen.corners.length;
    const state = cornerState();
    let line;
    if (n === 0) line = "Optional: click the four corners of the papyrus, or press Suggest corners. Without corners the whole photo is searched.";
    else if (n < 4) line = `${n} of 4 corners: click the ${["first", "second", "third", "fourth"][n]} corner, or Reset to search the whole photo.`;
    else if (state.problem) line = `The corners cannot be used: ${state.problem}`;
    else if (chosen.suggested) line = "Suggested corners: drag them to adjust, or Reset. Search uses them.";
    else line = "Four corners marked: drag a corner to adjust it, or Reset.";
    if (cornerHint.textContent !== line) cornerHint.textContent = line;
    cornerHint.dataset.problem = state.problem ? "true" : "false";
  }

  function pointFromEvent(event) {
    const rect = cornerCanvas.getBoundingClientRect();
    return { pt: clientToImage(event.clientX, event.clientY, rect, chosen.width, chosen.height), rect };
  }

  function onPointerDown(event) {
    if (!chosen || !chosen.bitmap || event.button !== 0) return;
    event.preventDefault();
    cornerCanvas.focus({ preventScroll: true });
    const { pt, rect } = pointFromEvent(event);
    const radius = (14 / rect.width) * chosen.width;
    let index = nearestCorner(chosen.corners, pt, radius);
    if (index < 0) {
      if (chosen.corners.length >= 4) {
        updateCornerHint();
        return;
      }
      chosen.corners.push(pt);
      index = chosen.corners.length - 1;
    }
    activeCorner = index;
    drag = { index, pointerId: event.pointerId };
    try {
      cornerCanvas.setPointerCapture(event.pointerId);
    } catch {
      /* synthetic events have no capturable pointer */
    }
    chosen.suggested = chosen.suggested && chosen.corners.length === 4;
    requestDraw();
  }

  function onPointerMove(event) {
    if (!drag || !chosen) return;
    const { pt } = pointFromEvent(event);
    chosen.corners[drag.index] = pt;
    requestDraw();
  }

  function onPointerUp(event) {
    if (!drag) return;
    if (event.type === "pointerup" && chosen) {
      const { pt } = pointFromEvent(event);
      chosen.corners[drag.index] = pt;
    }
    try {
      cornerCanvas.releasePointerCapture(drag.pointerId);
    } catch {
      /* already released */
    }
    drag = null;
    drawAll();
  }

  function onCanvasKey(event) {
    if (!chosen || !chosen.bitmap) return;
    const moves = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
    if (moves[event.key] && chosen.corners.length) {
      event.preventDefault();
      event.stopPropagation();
      const i = activeCorner >= 0 && activeCorner < chosen.corners.length ? activeCorner : chosen.corners.length - 1;
      activeCorner = i;
      const step = ((event.shiftKey ? 10 : 1) * chosen.width) / cornerCanvas.getBoundingClientRect().width;
      const [dx, dy] = moves[event.key];
      const [x, y] = chosen.corners[i];
      chosen.corners[i] = [Math.min(chosen.width, Math.max(0, x + dx * step)), Math.min(chosen.height, Math.max(0, y + dy * step))];
      requestDraw();
    } else if ((event.key === "Backspace" || event.key === "Delete") && chosen.corners.length) {
      event.preventDefault();
      event.stopPropagation();
      chosen.corners.splice(activeCorner >= 0 ? activeCorner : chosen.corners.length - 1, 1);
      chosen.suggested = false;
      activeCorner = -1;
      drawAll();
    }
  }

  // --- compare view, export, history -------------------------------------------------------------
  function setCompareQuery() {
    if (queryPreviewUrl) {
      compareQueryImg.src = queryPreviewUrl;
      compareQueryImg.hidden = false;
      compareQueryMissing.hidden = true;
    } else {
      compareQueryImg.removeAttribute("src");
      compareQueryImg.hidden = true;
      compareQueryMissing.hidden = false;
    }
  }

  function showCompare(index, focus = true) {
    const results = model.get("results") || [];
    const hit = results[index];
    if (!hit) return;
    if (compareIndex < 0) compareReturnFocus = document.activeElement;
    const sameHit = compareIndex === index && compareResultImg.dataset.key === (hit.image_key || "");
    compareIndex = index;
    const card = cardModel(hit, index);
    compareTitle.textContent = `#${card.rank} ${card.inventory} — similarity ${card.similarity}`;
    setCompareQuery();
    if (!sameHit) {
      retire(compareUrls);
      compareResultImg.src = thumbnailUrl(index, compareUrls) || "";
      compareResultImg.alt = `${card.inventory}`;
      compareResultImg.dataset.key = hit.image_key || "";
      compareResultImg.dataset.size = "thumbnail";
      if (hit.image_key) {
        const request = nextRequest();
        previewPending = { request, key: hit.image_key };
        model.send({ type: "preview", request, key: hit.image_key });
      }
    }
    const details = [card.title, card.meta, hit.collection ? `Collection: ${hit.collection}` : "", hit.hgv_id ? `HGV ${hit.hgv_id}` : "", hit.tm_id ? `TM ${hit.tm_id}` : ""]
      .filter(Boolean)
      .map((line) => h("div", { text: line }));
    if (card.url) {
      details.push(
        h("a", { class: "papyrus-link", href: card.url, target: "_blank", rel: "noopener noreferrer", text: "papyri.info record ↗" }),
      );
    }
    compareInfo.replaceChildren(...details);
    comparePrev.disabled = index <= 0;
    compareNext.disabled = index >= results.length - 1;
    compareBox.hidden = false;
    showEvidence(hit);
    for (const card of resultsList.children) card.classList.toggle("papyrus-card-selected", Number(card.dataset.index) === index);
    if (focus) compareClose.focus({ preventScroll: true });
  }

  // The query photo for the evidence drawing: asked for once per stored query (a worker decodes
  // it upright and at most 1024 px; the matches are scaled from query_size onto it).
  function ensureQueryPhoto() {
    const key = model.get("query_image_key") || "";
    if (queryPhoto.key === key && (queryPhoto.img || queryPhoto.request || queryPhoto.message)) return;
    retire(queryPhotoUrls);
    queryPhoto = { key, img: null, request: null, message: "" };
    if (!key) {
      queryPhoto.message = "the query photo is not known for these results";
      return;
    }
    queryPhoto.request = nextRequest();
    model.send({ type: "preview", request: queryPhoto.request, key });
  }

  function showEvidence(hit) {
    const ev = evidenceOf(hit);
    evidenceCaption.textContent = ev.caption;
    evidenceBox.dataset.kind = ev.kind;
    evidenceCanvas.dataset.inliers = ev.inliers === null ? "" : String(ev.inliers);
    evidenceCanvas.dataset.lines = "0";
    evidenceCanvas.hidden = !ev.drawable;
    evidenceCanvas.dataset.state = ev.drawable ? "loading" : "none";
    if (ev.drawable) {
      ensureQueryPhoto();
      drawEvidence();
    }
  }

  function loaded(img) {
    return Boolean(img && img.complete && img.naturalWidth > 0);
  }

  function drawEvidence() {
    if (compareIndex < 0 || disposed) return;
    const hit = (model.get("results") || [])[compareIndex];
    const ev = evidenceOf(hit);
    if (!ev.drawable) return;
    if (queryPhoto.message && !queryPhoto.img) {
      evidenceCanvas.dataset.state = "failed";
      evidenceCaption.textContent = `${ev.caption} (Cannot draw them: ${queryPhoto.message})`;
      return;
    }
    if (!loaded(queryPhoto.img) || !loaded(compareResultImg)) return; // drawn again on load
    const width = Math.max(240, (evidenceBox.clientWidth || compareBox.clientWidth || 720) - 2);
    const layout = evidenceLayout(hit.query_size, hit.reference_size, width, EVIDENCE_MAX_HEIGHT);
    const lines = evidenceLines(hit.matches, hit.query_size, hit.reference_size, layout);
    const dpr = window.devicePixelRatio || 1;
    evidenceCanvas.width = Math.round(layout.width * dpr);
    evidenceCanvas.height = Math.round(layout.height * dpr);
    evidenceCanvas.style.width = `${layout.width}px`;
    const ctx = evidenceCanvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, layout.width, layout.height);
    for (const [img, r] of [
      [queryPhoto.img, layout.query],
      [compareResultImg, layout.reference],
    ]) {
      ctx.drawImage(img, r.x, r.y, r.width, r.height);
    }
    lines.forEach((line, i) => {
      const colour = `hsl(${Math.round((i * 137.5) % 360)}, 90%, 55%)`;
      ctx.beginPath();
      ctx.moveTo(...line.query);
      ctx.lineTo(...line.reference);
      ctx.lineWidth = 2.5;
      ctx.strokeStyle = "rgba(0, 0, 0, 0.55)";
      ctx.stroke();
      ctx.lineWidth = 1.2;
      ctx.strokeStyle = colour;
      ctx.stroke();
      for (const [x, y] of [line.query, line.reference]) {
        ctx.beginPath();
        ctx.arc(x, y, 3, 0, 2 * Math.PI);
        ctx.fillStyle = colour;
        ctx.fill();
        ctx.lineWidth = 1;
        ctx.strokeStyle = "#000000";
        ctx.stroke();
      }
    });
    evidenceCanvas.dataset.lines = String(lines.length);
    evidenceCanvas.dataset.reference = compareResultImg.dataset.size || "";
    evidenceCanvas.dataset.state = "drawn";
  }

  function closeCompare(restoreFocus = true) {
    if (compareIndex < 0) return;
    const index = compareIndex;
    compareIndex = -1;
    previewPending = null;
    compareBox.hidden = true;
    retire(compareUrls);
    for (const card of resultsList.children) card.classList.remove("papyrus-card-selected");
    if (restoreFocus) {
      const button = resultsList.querySelector(`[data-testid="result-open"][data-index="${index}"]`);
      const target = button || compareReturnFocus;
      if (target && typeof target.focus === "function") target.focus({ preventScroll: true });
    }
  }

  function onResultsClick(event) {
    const button = event.target.closest('[data-testid="result-open"]');
    if (!button || !resultsList.contains(button)) return;
    showCompare(Number(button.dataset.index));
  }

  function download(textValue, type, filename) {
    const blob = new Blob([textValue], { type });
    const url = URL.createObjectURL(blob);
    const a = h("a", { href: url, download: filename, hidden: true });
    root.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  }

  function exportMeta() {
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

  function onExportCsv() {
    const results = model.get("results") || [];
    download("\ufeff" + resultsToCsv(results), "text/csv;charset=utf-8", exportFileName(model.get("query_name"), "csv"));
  }

  function onExportJson() {
    const results = model.get("results") || [];
    download(resultsToJson(results, exportMeta()), "application/json", exportFileName(model.get("query_name"), "json"));
  }

  function onHistoryClick(event) {
    const button = event.target.closest('[data-testid="history-item"]');
    if (!button || button.disabled) return;
    closeCompare(false);
    model.send({ type: "restore", id: button.dataset.id });
  }

  function onFieldKey(event) {
    // Enter in a field searches. Done here rather than left to the form's implicit submission,
    // which some notebook front ends swallow (JupyterLab holds keydown events for its shortcuts).
    if (event.key !== "Enter" || event.isComposing || event.shiftKey || event.ctrlKey || event.altKey || event.metaKey) return;
    event.preventDefault();
    event.stopPropagation();
    if (event.target === kInput) onKChange();
    else onFilterChange();
    if (!searchButton.disabled) form.requestSubmit(searchButton);
  }

  function onKeyDown(event) {
    if (event.key !== "Escape") return;
    if (compareIndex >= 0) {
      event.preventDefault();
      event.stopPropagation();
      closeCompare();
    } else if (isBusy()) {
      event.preventDefault();
      event.stopPropagation();
      onCancel();
    }
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

  function onMaxSideChange() {
    if (chosen && chosen.bitmap) {
      const fit = fitWithin(chosen.width, chosen.height, model.get("max_side"));
      chosenLine.textContent = fit.downscaled
        ? `${chosen.name}: ${chosen.width} × ${chosen.height} px, sent as ${fit.width} × ${fit.height}`
        : `${chosen.name}: ${chosen.width} × ${chosen.height} px`;
    }
  }

  // --- wiring --------------------------------------------------------------------------------------
  const listeners = [
    [fileInput, "change", onFileChange],
    [kInput, "change", onKChange],
    [form, "submit", onSubmit],
    [cancelButton, "click", onCancel],
    [suggestButton, "click", onSuggest],
    [resetButton, "click", onReset],
    [cornerCanvas, "pointerdown", onPointerDown],
    [cornerCanvas, "pointermove", onPointerMove],
    [cornerCanvas, "pointerup", onPointerUp],
    [cornerCanvas, "pointercancel", onPointerUp],
    [cornerCanvas, "keydown", onCanvasKey],
    [resultsList, "click", onResultsClick],
    [exportCsv, "click", onExportCsv],
    [exportJson, "click", onExportJson],
    [historyList, "click", onHistoryClick],
    [compareClose, "click", () => closeCompare()],
    [comparePrev, "click", () => showCompare(compareIndex - 1)],
    [compareResultImg, "load", () => drawEvidence()],
    [compareNext, "click", () => showCompare(compareIndex + 1)],
    [root, "dragenter", onDragOver],
    [root, "dragover", onDragOver],
    [root, "dragleave", onDragLeave],
    [root, "drop", onDrop],
    [root, "paste", onPaste],
    [root, "keydown", onKeyDown],
  ];
  for (const input of Object.values(filterInputs)) {
    listeners.push([input, "change", onFilterChange], [input, "keydown", onFieldKey]);
  }
  listeners.push([kInput, "keydown", onFieldKey]);
  for (const [target, type, fn] of listeners) target.addEventListener(type, fn);

  const modelEvents = [
    ["change:k", updateK],
    ["change:filters", updateFilters],
    ["change:max_side", onMaxSideChange],
    ["change:query_name", updateQuery],
    ["change:status", onStatusChange],
    ["change:results", () => schedule(updateResults)],
    ["change:thumbnails", () => schedule(updateResults)],
    ["change:query_preview", () => schedule(updateQueryPreview)],
    ["change:history", () => schedule(updateHistory)],
    ["change:history_previews", () => schedule(updateHistory)],
    ["change:history_id", () => schedule(updateHistory)],
    ["change:thumbnail_urls", () => schedule(updateResults)],
    ["change:dashboard_link", updateDashboard],
    ["msg:custom", onCustomMessage],
  ];
  for (const [name, fn] of modelEvents) model.on(name, fn);

  let resizeObserver = null;
  if (typeof ResizeObserver !== "undefined") {
    let lastWidth = 0;
    resizeObserver = new ResizeObserver(() => {
      const width = editor.clientWidth;
      if (width && Math.abs(width - lastWidth) > 8 && chosen && chosen.bitmap) {
        lastWidth = width;
        layoutCanvas();
        drawAll();
      }
    });
    resizeObserver.observe(editor);
  }

  updateK();
  updateFilters();
  updateQuery();
  updateQueryPreview();
  updateStatus();
  updateHistory();
  updateResults();
  updateDashboard();

  return () => {
    disposed = true;
    for (const [target, type, fn] of listeners) target.removeEventListener(type, fn);
    for (const [name, fn] of modelEvents) model.off(name, fn);
    if (resizeObserver) resizeObserver.disconnect();
    if (ticker !== null) clearInterval(ticker);
    ticker = null;
    revoke(resultUrls);
    revoke(historyUrls);
    revoke(compareUrls);
    revoke(queryPreviewUrls);
    revoke(queryPhotoUrls);
    if (chosen && chosen.bitmap) chosen.bitmap.close();
    if (chosen && chosen.display) chosen.display.close();
    root.remove();
  };
}

export default { render };
