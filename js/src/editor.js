// The query editor: choosing the photo (file input, drop, paste), marking its four corners on a
// canvas (pointer and keyboard), the live deskewed preview, "Suggest corners", the region a search
// without corners found (offered as suggested corners), and preparing the bytes a search or a
// suggestion sends (downscaled here when larger than `max_side`; decoded by the kernel when the
// browser cannot decode the file itself).

import { canvasToBytes, capitalise, errorText, h, toBytes } from "./dom.js";
import {
  clientToImage,
  cornersProblem,
  deskewSize,
  fitBox,
  fitWithin,
  nearestCorner,
  orderCorners,
  regionToCorners,
  scalePoints,
  warpQuad,
} from "./geometry.js";

const CORNER_SHORT = ["TL", "TR", "BR", "BL"];
const EDITOR_MAX_WIDTH = 560;
const EDITOR_MAX_HEIGHT = 440;
const PREVIEW_BOX = 240; // css px of the live deskew preview
export const QUERY_PREVIEW_SIDE = 320; // px of the crop sent with the search (history strip, compare view)
const SOURCE_SIDE = 1024; // px of the pixel copy the previews sample from

/** What a paste without an image says (outside the text fields, where text pastes go on). */
export const PASTE_NO_IMAGE_MESSAGE =
  "The clipboard holds no image: copy the photo itself (not its file or link), or drop or choose the file.";

/** The file name to send a downscaled copy under: the stem with .jpg. */
export function downscaledName(name) {
  const stem = String(name || "image").replace(/\.[^./\\]*$/, "");
  return `${stem || "image"}.jpg`;
}

/** The image file of a list of files (dropped): the first image, else the first file, else null. */
export function imageFileFrom(list) {
  const files = Array.from(list || []);
  return files.find((f) => f.type.startsWith("image/")) || files[0] || null;
}

/** The image a paste carries (its `clipboardData`), or null when it holds none (text, nothing). */
export function pastedImageFile(data) {
  if (!data) return null;
  const file = Array.from(data.files || []).find((f) => f && String(f.type || "").startsWith("image/"));
  if (file) return file;
  const item = Array.from(data.items || []).find((it) => it.kind === "file" && String(it.type || "").startsWith("image/"));
  return item ? item.getAsFile() : null;
}

/** Whether `target` takes pasted text itself (an input or text area, or editable content). */
export function isTextField(target) {
  if (!target || typeof target !== "object") return false;
  const tag = String(target.tagName || "").toLowerCase();
  return tag === "input" || tag === "textarea" || Boolean(target.isContentEditable);
}

/** How long the view waits for the kernel to decode a file the browser cannot (then it sends the
 * file as it is, as before the kernel was asked). */
export const DECODE_TIMEOUT_MS = 60_000;

/**
 * The query editor of one view. `onChange()` runs when what the form's buttons depend on changes;
 * `onMessage(text)` shows a message on the status line (a paste without an image).
 * Returns {imageField, el, queryLine, attach, detach, chosen, cornerState, prepared,
 * queryPreviewBytes, onCornersMessage, onDecodedMessage, offerRegion, updateQuery, onMaxSideChange, relayout,
 * dispose}.
 */
export function createQueryEditor({ model, id, nextRequest, onChange = () => {}, onMessage = () => {} }) {
  // The chosen image: {file, name, bitmap | null, width, height, corners: [[x, y]] in bitmap pixels,
  // suggested: bool, suggestedBy: "suggest" | "region" | "", source: {data, width, height, scale} | null,
  // prepared: Map(maxSide → Promise), decodedFrom: the file's own name when the kernel decoded it,
  // decodeError: why neither the browser nor the kernel could}
  let chosen = null;
  let drag = null; // {index, pointerId}
  let activeCorner = -1;
  let suggestPending = null; // {request, chosen, scaleX, scaleY}
  let decodePending = null; // {request, mine, resolve, timer}
  let frameRequested = false;
  let disposed = false;
  let dropTarget = null;

  const fileInput = h("input", {
    id: `${id}-file`,
    class: "papyrus-file",
    type: "file",
    accept: "image/*,.tif,.tiff,.heic,.heif,.avif",
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
  const queryLine = h("div", { class: "papyrus-query", "data-testid": "query-name" });

  function changed() {
    suggestButton.disabled = !chosen || !chosen.bitmap || Boolean(suggestPending);
    suggestButton.setAttribute("aria-busy", suggestPending ? "true" : "false");
    resetButton.disabled = !chosen || !chosen.bitmap || chosen.corners.length === 0;
    onChange();
  }

  function cornerState() {
    if (!chosen || !chosen.bitmap) return { ok: true, corners: null, problem: null };
    const n = chosen.corners.length;
    if (n === 0) return { ok: true, corners: null, problem: null };
    if (n < 4) return { ok: false, corners: null, problem: null };
    const problem = cornersProblem(chosen.corners, [chosen.width, chosen.height]);
    return { ok: !problem, corners: problem ? null : orderCorners(chosen.corners), problem };
  }

  function updateQuery() {
    const name = model.get("query_name") || "";
    queryLine.textContent = name ? `Query: ${name}` : "";
    queryLine.hidden = !name;
  }

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
      suggestedBy: "",
      source: null,
      prepared: new Map(),
      ready: null,
    };
    if (chosen && chosen.bitmap) chosen.bitmap.close();
    if (chosen && chosen.display) chosen.display.close();
    chosen = mine;
    suggestPending = null;
    endDecode(null, ""); // an earlier file's decoding: no longer wanted
    activeCorner = -1;
    chosenLine.textContent = mine.name;
    changed();
    // EXIF orientation applied: corners are marked on the photo as it is meant to be seen.
    mine.ready = createImageBitmap(file, { imageOrientation: "from-image" }).then(
      (bitmap) => {
        mine.bitmap = bitmap;
      },
      () => decodeInKernel(mine), // e.g. HEIC, TIFF: a worker decodes it (or says why it cannot)
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

  /**
   * A file this browser cannot decode (HEIC in most browsers, TIFF): a worker decodes it with the
   * search's own decoder and sends back an upright JPEG, long side at most max_side, which is then
   * shown, marked and searched with in its place. Resolves when that is done or has failed
   * (`mine.bitmap` stays null, `mine.decodeError` says why).
   */
  function decodeInKernel(mine) {
    return new Promise((resolve) => {
      const request = nextRequest();
      const timer = setTimeout(
        () => endDecode(request, `the kernel did not answer within ${DECODE_TIMEOUT_MS / 1000} s`),
        DECODE_TIMEOUT_MS,
      );
      decodePending = { request, mine, resolve, timer };
      chosenLine.textContent = `${mine.name}: this browser cannot show it; decoding it in the kernel…`;
      mine.file.arrayBuffer().then(
        (bytes) => {
          if (decodePending && decodePending.request === request) {
            model.send({ type: "decode", request, name: mine.name }, undefined, [bytes]);
          }
        },
        (err) => endDecode(request, errorText(err)),
      );
    });
  }

  /** The decoding waited for, if it is `request`'s (any, for null): no longer waited for. */
  function takeDecode(request) {
    const pending = decodePending;
    if (!pending || (request !== null && pending.request !== request)) return null;
    decodePending = null;
    clearTimeout(pending.timer);
    return pending;
  }

  /** Stop waiting for `request`'s decoding (null: whichever is waited for); `why` goes in its note. */
  function endDecode(request, why) {
    const pending = takeDecode(request);
    if (!pending) return;
    if (why) pending.mine.decodeError = why;
    pending.resolve();
  }

  /** The kernel's `decoded` reply: the JPEG of a file this browser could not decode, or why not. */
  function onDecodedMessage(content, buffers) {
    const pending = takeDecode(content.request);
    if (!pending) return;
    const { mine, resolve } = pending;
    const bytes = buffers && buffers.length ? toBytes(buffers[0]) : null;
    if (content.message || !bytes || !bytes.byteLength) {
      mine.decodeError = content.message || "no image came back";
      resolve();
      return;
    }
    const blob = new Blob([bytes], { type: "image/jpeg" });
    createImageBitmap(blob).then(
      (bitmap) => {
        mine.decodedFrom = mine.name;
        mine.name = downscaledName(mine.name);
        mine.file = new File([blob], mine.name, { type: "image/jpeg" });
        mine.bitmap = bitmap;
        resolve();
      },
      (err) => {
        mine.decodeError = errorText(err);
        resolve();
      },
    );
  }

  function queryChosenNote() {
    if (!chosen) return;
    if (!chosen.bitmap) {
      cornerHint.textContent = "";
      queryLine.hidden = false;
      const why = chosen.decodeError ? `; nor could the kernel decode it: ${chosen.decodeError}` : "";
      queryLine.textContent = `Chosen: ${chosen.name} (this browser cannot show it${why}; it is sent as it is)`;
      chosenLine.textContent = chosen.name;
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
      changed();
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

  function onDragOver(event) {
    const types = event.dataTransfer ? Array.from(event.dataTransfer.types || []) : [];
    if (!types.includes("Files")) return;
    event.preventDefault();
    event.stopPropagation();
    event.dataTransfer.dropEffect = "copy";
    dropTarget.classList.add("papyrus-dragover");
  }

  function onDragLeave(event) {
    if (!event.relatedTarget || !dropTarget.contains(event.relatedTarget)) dropTarget.classList.remove("papyrus-dragover");
  }

  function onDrop(event) {
    dropTarget.classList.remove("papyrus-dragover");
    const file = event.dataTransfer ? imageFileFrom(event.dataTransfer.files) : null;
    if (!file) return;
    event.preventDefault();
    event.stopPropagation();
    setInputFiles(file);
    choose(file, file.name || "dropped-image");
  }

  function onPaste(event) {
    const file = pastedImageFile(event.clipboardData);
    if (!file) {
      // Text pasted into a field goes on as usual; anywhere else, say that nothing usable came.
      if (!isTextField(event.target)) onMessage(PASTE_NO_IMAGE_MESSAGE);
      return;
    }
    event.preventDefault();
    event.stopPropagation();
    const ext = (file.type.split("/")[1] || "png").replace("jpeg", "jpg");
    // Browsers call every pasted bitmap "image.png", whatever its type: give it a truthful name.
    const name = file.name && file.name !== "image.png" ? file.name : `pasted-image.${ext}`;
    const named = name === file.name ? file : new File([file], name, { type: file.type });
    setInputFiles(named);
    choose(named, name);
  }


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

  async function onSuggest() {
    if (!chosen || suggestPending) return;
    await chosen.ready;
    if (!chosen || !chosen.bitmap || suggestPending) return;
    const mine = chosen;
    const request = nextRequest();
    suggestPending = { request, chosen: mine, scaleX: 1, scaleY: 1 };
    cornerHint.textContent = "Looking for the papyrus on the photo…";
    changed();
    try {
      const upload = await prepared(mine);
      if (!suggestPending || suggestPending.request !== request) return;
      suggestPending.scaleX = upload.scaleX;
      suggestPending.scaleY = upload.scaleY;
      model.send({ type: "suggest_corners", request, name: upload.name }, undefined, [upload.bytes.slice(0)]);
    } catch (err) {
      suggestPending = null;
      cornerHint.textContent = `Could not read the photo: ${errorText(err)}`;
      changed();
    }
  }

  function onReset() {
    if (!chosen) return;
    chosen.corners = [];
    chosen.suggested = false;
    chosen.suggestedBy = "";
    activeCorner = -1;
    drawAll();
    changed();
  }

  /**
   * A search of `mine` without corners found where the papyrus is: `region` (a hit's four corners
   * in the pixels of the photo as the kernel stored it, of `querySize`). Offer it as suggested
   * corners, the editor's normal corner state, so that Search uses them; only while no corners are
   * marked. Returns whether it was taken.
   */
  function offerRegion(mine, region, querySize) {
    if (!chosen || chosen !== mine || !chosen.bitmap || chosen.corners.length || suggestPending || drag) return false;
    const corners = regionToCorners(region, querySize, [chosen.width, chosen.height]);
    if (!corners || cornersProblem(corners, [chosen.width, chosen.height])) return false;
    chosen.corners = orderCorners(corners);
    chosen.suggested = true;
    chosen.suggestedBy = "region";
    activeCorner = -1;
    drawAll();
    return true;
  }

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
    changed();
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
    cornerCanvas.dataset.source = chosen.suggested ? chosen.suggestedBy : pts.length ? "marked" : "";
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
    else if (chosen.suggested && chosen.suggestedBy === "region") {
      line = "Region found: drag the corners to adjust, then Search again (Reset searches the whole photo).";
    } else if (chosen.suggested) line = "Suggested corners: drag them to adjust, or Reset. Search uses them.";
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
    if (!chosen.suggested) chosen.suggestedBy = "";
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
      chosen.suggestedBy = "";
      activeCorner = -1;
      drawAll();
    }
  }

  function onMaxSideChange() {
    if (chosen && chosen.bitmap) {
      const fit = fitWithin(chosen.width, chosen.height, model.get("max_side"));
      const line = fit.downscaled
        ? `${chosen.name}: ${chosen.width} × ${chosen.height} px, sent as ${fit.width} × ${fit.height}`
        : `${chosen.name}: ${chosen.width} × ${chosen.height} px`;
      chosenLine.textContent = chosen.decodedFrom ? `${line} (${chosen.decodedFrom}, decoded by the kernel)` : line;
    }
  }

  function onCornersMessage(content) {
    const pending = suggestPending;
    if (!pending || pending.request !== content.request) return;
    suggestPending = null;
    if (pending.chosen === chosen && Array.isArray(content.corners) && content.corners.length === 4) {
      chosen.corners = content.corners.map(([x, y]) => [
        Math.min(chosen.width, Math.max(0, x / pending.scaleX)),
        Math.min(chosen.height, Math.max(0, y / pending.scaleY)),
      ]);
      chosen.suggested = true;
      chosen.suggestedBy = "suggest";
      activeCorner = -1;
      drawAll();
    } else if (pending.chosen === chosen) {
      cornerHint.textContent = capitalise(content.message) || "No corners found: click the four corners of the papyrus.";
    }
    if (pending.chosen === chosen && Array.isArray(content.corners)) updateCornerHint();
    changed();
  }

  const listeners = [
    [fileInput, "change", onFileChange],
    [suggestButton, "click", onSuggest],
    [resetButton, "click", onReset],
    [cornerCanvas, "pointerdown", onPointerDown],
    [cornerCanvas, "pointermove", onPointerMove],
    [cornerCanvas, "pointerup", onPointerUp],
    [cornerCanvas, "pointercancel", onPointerUp],
    [cornerCanvas, "keydown", onCanvasKey],
  ];
  const rootListeners = [
    ["dragenter", onDragOver],
    ["dragover", onDragOver],
    ["dragleave", onDragLeave],
    ["drop", onDrop],
    ["paste", onPaste],
  ];
  for (const [target, type, fn] of listeners) target.addEventListener(type, fn);

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

  return {
    imageField: dropZone,
    el: editor,
    queryLine,
    /** Take drops and pastes anywhere on `target` (the whole widget). */
    attach(target) {
      dropTarget = target;
      for (const [type, fn] of rootListeners) target.addEventListener(type, fn);
    },
    chosen: () => chosen,
    cornerState,
    prepared,
    queryPreviewBytes,
    onCornersMessage,
    onDecodedMessage,
    offerRegion,
    updateQuery,
    onMaxSideChange,
    /** Choose `file` as the query (as a drop or a paste does). */
    choose,
    dispose() {
      disposed = true;
      endDecode(null, "");
      for (const [target, type, fn] of listeners) target.removeEventListener(type, fn);
      if (dropTarget) for (const [type, fn] of rootListeners) dropTarget.removeEventListener(type, fn);
      if (resizeObserver) resizeObserver.disconnect();
      if (chosen && chosen.bitmap) chosen.bitmap.close();
      if (chosen && chosen.display) chosen.display.close();
    },
  };
}
