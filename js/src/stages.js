// The stage line: the status text, the strip of stage chips and the Dask dashboard link.
// The browser's own upload phase (reducePhase) goes in front of the kernel's `status` trait.

import { h, now, safeUrl } from "./dom.js";

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
  { id: "verifying", label: "verifying" },
  { id: "done", label: "done" },
];

const STEP_OF_STAGE = {
  uploading: 0,
  submitting: 1,
  queued: 1,
  preparing: 1,
  embedding: 2,
  searching: 3,
  verifying: 4, // tasks.SearchJob's last stage (skipped when verification is off: it then turns done with "done")
  done: 5,
};

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

/**
 * The verdict line for the `verdict` trait (api.Results.verdict): {text, kind}, kind one of
 * "confirmed" | "none" (no confirmed match in this collection) | "unverified" | "interim" (the first
 * look's answer while a second look runs: widget.INTERIM_PREFIX) | "other" | "" (nothing to say).
 */
export function verdictLine(verdict) {
  const raw = typeof verdict === "string" ? verdict.trim() : "";
  if (!raw) return { text: "", kind: "" };
  const lower = raw.toLowerCase();
  const kind = lower.startsWith("so far")
    ? "interim"
    : lower.startsWith("confirmed")
    ? "confirmed"
    : lower.startsWith("no confirmed match")
      ? "none"
      : lower.startsWith("not verified")
        ? "unverified"
        : "other";
  return { text: raw.charAt(0).toUpperCase() + raw.slice(1), kind };
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
 *   {type: "refuse", message}                nothing to search (no image, nothing usable pasted): say why
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
    case "refuse":
      if (p.upload) return p; // a search is on its way: its status speaks
      return { upload: null, notice: { state: "error", stage: "", elapsed: 0, message: event.message, refused: true } };
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

/**
 * The stage strip for a (view) status: [{id, label, state: "done" | "current" | "todo" | "failed" | "cancelled"}].
 * A refusal (nothing was searched) shows no strip: `stagesShown` is false for it.
 */
export function stageSteps(status) {
  const s = status && typeof status === "object" ? status : {};
  const todo = () => STEPS.map((step) => ({ ...step, state: "todo" }));
  if (!s.state) return todo();
  if (s.state === "done") return STEPS.map((step) => ({ ...step, state: "done" }));
  if (s.state === "running") {
    const at = STEP_OF_STAGE[s.stage] ?? 1;
    return STEPS.map((step, i) => ({ ...step, state: i < at ? "done" : i === at ? "current" : "todo" }));
  }
  const at = STEP_OF_STAGE[s.lastStage] ?? -1;
  if (s.state === "cancelled") {
    // Nothing came of a cancelled search: no step stays lit; the one it stopped in says so.
    return STEPS.map((step, i) => ({ ...step, state: i === at ? "cancelled" : "todo" }));
  }
  // error: the steps before the one that failed stay done
  return STEPS.map((step, i) => ({ ...step, state: i < at ? "done" : i === at && s.state === "error" ? "failed" : "todo" }));
}

/**
 * The stage line of one view. `model` is the anywidget model; `onChange()` runs after every
 * update (the view's buttons follow the busy state); `busyTarget` gets aria-busy while a search runs.
 * The line below the strip says the `verdict` of the results on show.
 * Returns {el, update, onStatusChange, updateDashboard, startUpload, isUploading, ack, uploadFailed,
 * cancel, refuse, isBusy, dispose}.
 */
export function createStageLine({ model, busyTarget = null, onChange = () => {} }) {
  let phase = initialPhase();
  let statusReceivedAt = now();
  let ticker = null;
  let lastRunningStage = null; // the stage an error or cancellation interrupted (for the strip)
  let disposed = false;

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
  const verdictEl = h("p", { class: "papyrus-verdict", "data-testid": "verdict", role: "status", hidden: true });
  const el = h("div", { class: "papyrus-progress" }, [statusLine, stagesList, dashboardLink, verdictEl]);

  const kernelStatus = () => model.get("status") || {};
  const isBusy = () => Boolean(phase.upload) || kernelStatus().state === "running";

  function current() {
    const shown = viewStatus(phase, kernelStatus(), now(), statusReceivedAt);
    if (shown.state === "error" || shown.state === "cancelled") shown.lastStage = lastRunningStage;
    return shown;
  }

  function update() {
    if (disposed) return;
    const shown = current();
    const { text: line, kind } = statusText(shown);
    if (statusLine.textContent !== line) statusLine.textContent = line;
    statusLine.dataset.state = kind;
    statusLine.dataset.stage = shown.stage || "";
    if (kind === "error") statusLine.setAttribute("role", "alert");
    else statusLine.removeAttribute("role");
    if (busyTarget) busyTarget.setAttribute("aria-busy", kind === "running" ? "true" : "false");
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
    stagesList.hidden = !shown.state || Boolean(shown.refused);
    // The verdict on the results on show (while a search is on its way, only that of its first
    // look's answer, shown while a second look runs).
    const said = verdictLine(model.get("verdict"));
    const verdict = kind === "running" && said.kind !== "interim" ? { text: "", kind: "" } : said;
    if (verdictEl.textContent !== verdict.text) verdictEl.textContent = verdict.text;
    verdictEl.dataset.kind = verdict.kind;
    verdictEl.hidden = !verdict.text;
    onChange();
    // Tick the seconds between the kernel's updates while something runs; stop otherwise.
    if (kind === "running" && ticker === null) ticker = setInterval(update, 200);
    if (kind !== "running" && ticker !== null) {
      clearInterval(ticker);
      ticker = null;
    }
  }

  function dispatch(event) {
    phase = reducePhase(phase, event);
    update();
  }

  return {
    el,
    update,
    isBusy,
    onStatusChange() {
      statusReceivedAt = now();
      const s = kernelStatus();
      if (s.state === "running") lastRunningStage = s.stage;
      dispatch({ type: "status" });
    },
    updateDashboard() {
      const url = safeUrl(model.get("dashboard_link"));
      if (url) dashboardLink.setAttribute("href", url);
      else dashboardLink.removeAttribute("href");
      dashboardLink.hidden = !url;
    },
    /** Search pressed: the browser reads, downscales and sends the image (request id). */
    startUpload(request) {
      lastRunningStage = "uploading";
      dispatch({ type: "upload", request, at: now() });
    },
    /** Whether the upload of `request` is still wanted (not cancelled, failed or superseded). */
    isUploading(request) {
      return Boolean(phase.upload && phase.upload.request === request) && !disposed;
    },
    ack(request) {
      dispatch({ type: "ack", request });
    },
    uploadFailed(request, message) {
      dispatch({ type: "upload-failed", request, at: now(), message });
    },
    cancel() {
      dispatch({ type: "cancel", at: now() });
    },
    /** The search was not sent because of what the form holds (e.g. a date filter that is no year). */
    invalid(message) {
      phase = reducePhase(phase, { type: "upload", request: "invalid", at: now() });
      dispatch({ type: "upload-failed", request: "invalid", at: now(), message });
    },
    /** Nothing to search: say why on the status line (no stage strip). */
    refuse(message) {
      dispatch({ type: "refuse", message });
    },
    dispose() {
      disposed = true;
      if (ticker !== null) clearInterval(ticker);
      ticker = null;
    },
  };
}
