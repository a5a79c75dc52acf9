// DOM and byte helpers shared by the parts of the view (js/src/*.js). No state of their own.

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

export function text(value) {
  if (value === null || value === undefined) return "";
  return String(value).trim();
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

export function h(tag, attrs = {}, children = []) {
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

export function blobUrl(bytes, urls) {
  const b = toBytes(bytes);
  if (b.byteLength === 0) return null;
  const url = URL.createObjectURL(new Blob([b], { type: sniffImageType(b) }));
  urls.push(url);
  return url;
}

export function canvasToBytes(canvas, type = "image/jpeg", quality = 0.92) {
  return new Promise((resolve, reject) => {
    canvas.toBlob(
      (blob) => (blob ? blob.arrayBuffer().then(resolve, reject) : reject(new Error("the browser could not encode the image"))),
      type,
      quality,
    );
  });
}

export function now() {
  return typeof performance !== "undefined" ? performance.now() : Date.now();
}
/** A message for the user with its first letter in upper case ("no corners" → "No corners"). */
export function capitalise(message) {
  const s = String(message ?? "").trim();
  return s ? s[0].toLocaleUpperCase() + s.slice(1) : s;
}

/** Revoke the object URLs in `urls` now (and empty the list). */
export function revoke(urls) {
  for (const url of urls) URL.revokeObjectURL(url);
  urls.length = 0;
}

/**
 * Revoke the object URLs in `urls` a little later (and empty the list): an image that has just been
 * replaced may still be fetching its URL, and a revoked URL would be a console error.
 */
export function retire(urls) {
  const old = urls.splice(0);
  if (old.length) setTimeout(() => old.forEach((url) => URL.revokeObjectURL(url)), 5000);
}

/** The first error message of `err` (an Error or anything else) as text. */
export function errorText(err) {
  return err && err.message ? err.message : String(err);
}
