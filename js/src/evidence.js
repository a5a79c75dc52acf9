// Evidence of geometric verification: the inlier matches drawn between the query photo and the
// reference, and the region where a confirmed papyrus lies on the photo (pure layout helpers, and
// the canvas drawing the compare view uses).
//
// The drawing is a list of layers (EVIDENCE_LAYERS), each `(ctx, scene)` with
// scene = {hit, layout, lines, region, images: {query, reference}}: a new mark on the drawing is
// one more layer, with its own pure helper for the coordinates, like evidenceLines / regionOnRect.


/** Inlier counts up to this are what chance agreement gives (papyrus_widgets.retrieval.confirm.MIN_INLIERS). */
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
 * {kind: "confirmed" | "weak" | "none" | "unverified", inliers, drawable, caption}.
 * The decision is the kernel's (`confirmed`: enough inliers, spread over the papyrus); a hit dict
 * without `confirmed` (an older kernel) counts as confirmed above EVIDENCE_MIN_INLIERS.
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
    return { kind: "none", inliers: 0, drawable: false, caption: "Not confirmed: no matching keypoints agree on one geometry." };
  }
  const agree = `${inliers} matching keypoint${inliers === 1 ? " agrees" : "s agree"} on one geometry`;
  const confirmed = typeof h.confirmed === "boolean" ? h.confirmed : inliers > EVIDENCE_MIN_INLIERS;
  const drawn = drawable && matches.length < inliers ? ` (the best ${matches.length} drawn)` : "";
  if (confirmed) {
    return { kind: "confirmed", inliers, drawable, caption: `Confirmed: ${agree}${drawn}: the same papyrus is in the photo.` };
  }
  const why =
    h.near_miss === true
      ? "nearly enough to show it is the same one (a near miss: compare the two)"
      : inliers <= EVIDENCE_MIN_INLIERS
        ? "no more than chance gives"
        : "too few, or on too small a part of the papyrus, to show it is the same one";
  return { kind: "weak", inliers, drawable, caption: `Not confirmed: ${agree}${drawn}: ${why}.` };
}

/**
 * A hit's `region` (four [x, y] corners in the pixels of an image of `querySize`, the query photo
 * as stored) as points on `rect`, where that image is drawn; null when there is none or it is
 * malformed. The points may lie outside `rect` (the papyrus can reach past the photo's edge).
 */
export function regionOnRect(region, querySize, rect) {
  const size = validSize(querySize);
  if (!size || !Array.isArray(region) || region.length !== 4) return null;
  const points = [];
  for (const p of region) {
    if (!Array.isArray(p) || p.length !== 2) return null;
    const [x, y] = p.map(Number);
    if (!Number.isFinite(x) || !Number.isFinite(y)) return null;
    points.push([rect.x + (x / size[0]) * rect.width, rect.y + (y / size[1]) * rect.height]);
  }
  return points;
}

/** Layer: the query photo and the reference image, side by side. */
export function drawImages(ctx, { layout, images }) {
  ctx.drawImage(images.query, layout.query.x, layout.query.y, layout.query.width, layout.query.height);
  ctx.drawImage(images.reference, layout.reference.x, layout.reference.y, layout.reference.width, layout.reference.height);
}

/** Layer: one coloured line per inlier match, with a dot at each end. */
export function drawMatchLines(ctx, { lines }) {
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
}

/** Layer: the region where the papyrus was found on the query photo (confirmed hits), clipped to the photo. */
export function drawRegion(ctx, { layout, region }) {
  if (!region) return;
  const q = layout.query;
  ctx.save();
  ctx.beginPath();
  ctx.rect(q.x, q.y, q.width, q.height);
  ctx.clip();
  ctx.beginPath();
  region.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
  ctx.closePath();
  ctx.lineWidth = 4;
  ctx.strokeStyle = "rgba(0, 0, 0, 0.7)";
  ctx.stroke();
  ctx.setLineDash([8, 5]);
  ctx.lineWidth = 2;
  ctx.strokeStyle = "#40c4ff";
  ctx.stroke();
  ctx.restore();
}

/** The layers of the evidence drawing, bottom first. */
export const EVIDENCE_LAYERS = [drawImages, drawRegion, drawMatchLines];

/**
 * The scene for a hit drawn `maxWidth` × `maxHeight` at most: {hit, layout, lines, region, images}.
 * `region`: the confirmed hit's region on the drawn query photo (regionOnRect), or null.
 * `images` = {query, reference}: loaded images (or anything ctx.drawImage takes).
 */
export function evidenceScene(hit, images, maxWidth, maxHeight) {
  const layout = evidenceLayout(hit.query_size, hit.reference_size, maxWidth, maxHeight);
  const lines = evidenceLines(hit.matches, hit.query_size, hit.reference_size, layout);
  const region = hit.confirmed === false ? null : regionOnRect(hit.region, hit.query_size, layout.query);
  return { hit, layout, lines, region, images };
}

/** Draw `scene` with `layers` on a 2-D context already scaled to css pixels. */
export function drawEvidenceScene(ctx, scene, layers = EVIDENCE_LAYERS) {
  ctx.clearRect(0, 0, scene.layout.width, scene.layout.height);
  for (const layer of layers) layer(ctx, scene);
}
