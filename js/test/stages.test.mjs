// The stage state machine, filters and export helpers of js/src/. Run: node --test js/test/
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { HELP_TEXT, filtersFromFields, filtersSummary, parseYear } from "../src/controls.js";
import { csvCell, exportFileName, resultsToCsv, resultsToJson } from "../src/export.js";
import { historyLabel } from "../src/history.js";
import { STEPS, initialPhase, reducePhase, stageSteps, statusText, verdictLine, viewStatus } from "../src/stages.js";

const states = (steps) => steps.map((s) => `${s.id}:${s.state}`).join(" ");

test("the steps are uploading → preparing → embedding → searching → verifying → done", () => {
  assert.deepEqual(
    STEPS.map((s) => s.id),
    ["uploading", "preparing", "embedding", "searching", "verifying", "done"],
  );
});

test("defect: the chips show the kernel's verifying stage (tasks.STAGES ends searching → verifying → done)", () => {
  const stages = readFileSync(new URL("../../papyrus_widgets/tasks.py", import.meta.url), "utf8").match(/^STAGES = \(([^)]*)\)/m)[1];
  for (const stage of stages.split(",").map((x) => x.trim().replace(/"/g, "")).filter(Boolean)) {
    assert.ok(STEPS.some((step) => step.id === stage) || ["queued"].includes(stage), `no chip for the kernel's stage ${stage}`);
  }
  assert.equal(
    states(stageSteps({ state: "running", stage: "verifying", elapsed: 3 })),
    "uploading:done preparing:done embedding:done searching:done verifying:current done:todo",
  );
  assert.equal(statusText({ state: "running", stage: "verifying", elapsed: 3 }).text, "verifying… 3.0 s");
});

test("a search from the browser: upload, ack, kernel stages, done", () => {
  let phase = initialPhase();
  const before = { state: "done", stage: "done", elapsed: 0.8, message: "" }; // the previous search
  phase = reducePhase(phase, { type: "upload", request: "r1", at: 1000 });
  let shown = viewStatus(phase, before, 1500, 0);
  assert.deepEqual(shown, { state: "running", stage: "uploading", elapsed: 0.5, message: "" });
  assert.equal(statusText(shown).text, "uploading… 0.5 s");
  assert.equal(states(stageSteps(shown)), "uploading:current preparing:todo embedding:todo searching:todo verifying:todo done:todo");

  // The kernel's status changes before the ack arrives: the upload still shows.
  const submitting = { state: "running", stage: "submitting", elapsed: 0, message: "" };
  phase = reducePhase(phase, { type: "status" });
  assert.equal(viewStatus(phase, submitting, 1600, 1600).stage, "uploading");

  // An ack for another request changes nothing; ours hands over to the kernel's status.
  assert.equal(reducePhase(phase, { type: "ack", request: "other" }), phase);
  phase = reducePhase(phase, { type: "ack", request: "r1" });
  shown = viewStatus(phase, submitting, 1700, 1600);
  assert.equal(shown.stage, "submitting");
  assert.equal(statusText(shown).text, "starting… 0.1 s");
  assert.equal(states(stageSteps(shown)), "uploading:done preparing:current embedding:todo searching:todo verifying:todo done:todo");

  for (const [stage, expected] of [
    ["preparing", "uploading:done preparing:current embedding:todo searching:todo verifying:todo done:todo"],
    ["embedding", "uploading:done preparing:done embedding:current searching:todo verifying:todo done:todo"],
    ["searching", "uploading:done preparing:done embedding:done searching:current verifying:todo done:todo"],
  ]) {
    assert.equal(states(stageSteps(viewStatus(phase, { state: "running", stage, elapsed: 1 }, 0, 0))), expected);
  }
  const done = viewStatus(phase, { state: "done", stage: "done", elapsed: 1.23 }, 5000, 4000);
  assert.equal(done.elapsed, 1.23, "a finished job's elapsed time is not carried forward");
  assert.equal(states(stageSteps(done)), "uploading:done preparing:done embedding:done searching:done verifying:done done:done");
});

test("elapsed ticks between the kernel's updates while running", () => {
  const running = { state: "running", stage: "embedding", elapsed: 2.0 };
  const shown = viewStatus(initialPhase(), running, 10_700, 10_000);
  assert.ok(Math.abs(shown.elapsed - 2.7) < 1e-9);
  assert.equal(statusText(shown).text, "embedding… 2.7 s");
  assert.equal(viewStatus(initialPhase(), running, Number.NaN, 0).elapsed, 2.0);
});

test("cancel during the upload, and an upload that fails", () => {
  let phase = reducePhase(initialPhase(), { type: "upload", request: "r2", at: 0 });
  phase = reducePhase(phase, { type: "cancel", at: 300 });
  assert.equal(phase.upload, null);
  const shown = viewStatus(phase, { state: "done", stage: "done", elapsed: 1 }, 400, 0);
  assert.equal(statusText(shown).text, "cancelled after 0.3 s");
  // The late ack of the cancelled upload changes nothing; the next status clears the notice.
  assert.equal(reducePhase(phase, { type: "ack", request: "r2" }), phase);
  phase = reducePhase(phase, { type: "status" });
  assert.equal(viewStatus(phase, { state: "cancelled", stage: "cancelled", elapsed: 0.1 }, 0, 0).state, "cancelled");
  // Cancel with nothing uploading leaves the phase alone (the kernel reports the cancellation).
  assert.equal(reducePhase(initialPhase(), { type: "cancel", at: 1 }).notice, null);

  let failing = reducePhase(initialPhase(), { type: "upload", request: "r3", at: 0 });
  assert.equal(reducePhase(failing, { type: "upload-failed", request: "r9", message: "x", at: 1 }), failing);
  failing = reducePhase(failing, { type: "upload-failed", request: "r3", message: "Could not read a.jpg", at: 200 });
  const error = viewStatus(failing, {}, 0, 0);
  assert.deepEqual(statusText(error), { text: "Could not read a.jpg", kind: "error" });
  assert.equal(states(stageSteps({ ...error, lastStage: "uploading" })).split(" ")[0], "uploading:failed");
});

test("stageSteps: idle, and an error in the middle", () => {
  assert.ok(stageSteps({}).every((s) => s.state === "todo"));
  assert.ok(stageSteps(null).every((s) => s.state === "todo"));
  assert.equal(
    states(stageSteps({ state: "error", stage: "error", lastStage: "embedding" })),
    "uploading:done preparing:done embedding:failed searching:todo verifying:todo done:todo",
  );
  assert.equal(states(stageSteps({ state: "running", stage: "verifying" })).split(" ")[4], "verifying:current");
});

test("parseYear and filtersFromFields", () => {
  assert.equal(parseYear(""), null);
  assert.equal(parseYear(" 250 "), 250);
  assert.equal(parseYear("-30"), -30);
  assert.equal(parseYear("−30"), -30);
  assert.ok(Number.isNaN(parseYear("3rd c.")));
  assert.ok(Number.isNaN(parseYear("2.5")));
  assert.deepEqual(filtersFromFields({ date_from: "-50", date_to: "", place: " Hermopolis ", collection: "" }), {
    filters: { date_from: -50, place: "Hermopolis" },
    invalid: [],
  });
  assert.deepEqual(filtersFromFields({ date_from: "x" }).invalid, ["date_from"]);
  assert.deepEqual(filtersFromFields({ date_from: "300", date_to: "100" }).invalid, ["date_to"]);
  assert.equal(filtersSummary({}), "Filters");
  assert.equal(filtersSummary({ place: "Hermopolis", date_from: -50 }), "Filters (2)");
});

test("csvCell: quoting and formula defusing", () => {
  assert.equal(csvCell(null), "");
  assert.equal(csvCell(0.973), "0.973");
  assert.equal(csvCell(-30), "-30");
  assert.equal(csvCell("P.Heid. inv. G 107"), "P.Heid. inv. G 107");
  assert.equal(csvCell('Brief, "privat"'), '"Brief, ""privat"""');
  assert.equal(csvCell("line\nbreak"), '"line\nbreak"');
  assert.equal(csvCell("=HYPERLINK(1)"), "'=HYPERLINK(1)");
  assert.equal(csvCell("-30"), "-30");
  assert.equal(csvCell("@x"), "'@x");
  assert.equal(csvCell(["a", "b"]), "a; b");
});

test("resultsToCsv and resultsToJson", () => {
  const hits = [
    { rank: 1, score: 0.99, inventory: "P.Heid. inv. G 107", title: "Brief, privat", date_from: -30, place: "Hermopolis" },
    { rank: 2, score: 0.5, inventory: "P.Heid. inv. G 24", title: "Ἐπιστολή" },
  ];
  const csv = resultsToCsv(hits, ["rank", "score", "inventory", "title", "date_from", "place"]);
  assert.equal(
    csv,
    "rank,score,inventory,title,date_from,place\r\n" +
      '1,0.99,P.Heid. inv. G 107,"Brief, privat",-30,Hermopolis\r\n' +
      "2,0.5,P.Heid. inv. G 24,Ἐπιστολή,,\r\n",
  );
  assert.equal(resultsToCsv([]).split("\r\n")[0].split(",")[0], "rank");
  const json = JSON.parse(resultsToJson(hits, { query: "photo.jpg", k: 2, filters: {}, corners: null }));
  assert.equal(json.query, "photo.jpg");
  assert.equal(json.hits.length, 2);
  assert.equal(json.hits[1].title, "Ἐπιστολή");
  assert.equal(exportFileName("my photo (1).JPG", "csv"), "papyrus-results-my_photo_1.csv");
  assert.equal(exportFileName("", "json"), "papyrus-results-query.json");
});

test("historyLabel and the help text", () => {
  assert.equal(
    historyLabel({ name: "photo.jpg", count: 8, top: "P.Heid. inv. G 24", corners: [[0, 0]], filters: { place: "x" } }),
    "photo.jpg: 8 results, best P.Heid. inv. G 24, deskewed, 1 filter",
  );
  assert.equal(historyLabel({}), "query: 0 results");
  assert.ok(HELP_TEXT.some((line) => /cancels the running search/.test(line)), "the help says what a second Search does");
});

test("defect: after Cancel no chip stays lit (the one it stopped in says cancelled)", () => {
  // Cancelled in the kernel's "preparing" (the browser test's case): uploading did not stay done.
  assert.equal(
    states(stageSteps({ state: "cancelled", stage: "cancelled", lastStage: "preparing" })),
    "uploading:todo preparing:cancelled embedding:todo searching:todo verifying:todo done:todo",
  );
  assert.equal(
    states(stageSteps({ state: "cancelled", stage: "cancelled", lastStage: "searching" })),
    "uploading:todo preparing:todo embedding:todo searching:cancelled verifying:todo done:todo",
  );
  // Cancelled during the browser's upload: the uploading chip is no longer current.
  let phase = reducePhase(initialPhase(), { type: "upload", request: "r1", at: 0 });
  phase = reducePhase(phase, { type: "cancel", at: 500 });
  const shown = { ...viewStatus(phase, { state: "done", stage: "done", elapsed: 1 }, 600, 0), lastStage: "uploading" };
  assert.equal(states(stageSteps(shown)), "uploading:cancelled preparing:todo embedding:todo searching:todo verifying:todo done:todo");
  assert.ok(stageSteps(shown).every((step) => step.state !== "current" && step.state !== "done"));
});

test("defect: a refusal (nothing to search) is a message without a stage strip", () => {
  let phase = reducePhase(initialPhase(), { type: "refuse", message: "Choose a papyrus image first." });
  const shown = viewStatus(phase, {}, 0, 0);
  assert.deepEqual(statusText(shown), { text: "Choose a papyrus image first.", kind: "error" });
  assert.equal(shown.refused, true);
  // The next search, or the kernel's next status, replaces it; an upload in flight is not interrupted.
  assert.equal(reducePhase(phase, { type: "upload", request: "r2", at: 0 }).notice, null);
  assert.equal(reducePhase(phase, { type: "status" }).notice, null);
  phase = reducePhase(initialPhase(), { type: "upload", request: "r3", at: 0 });
  assert.equal(reducePhase(phase, { type: "refuse", message: "x" }), phase);
});

test("verdictLine: the kernel's verdict, capitalised, with its kind", () => {
  assert.deepEqual(verdictLine("confirmed: P.Heid. inv. G 24, 186 keypoints agree on one geometry."), {
    text: "Confirmed: P.Heid. inv. G 24, 186 keypoints agree on one geometry.",
    kind: "confirmed",
  });
  const none = verdictLine("no confirmed match in this collection: the hits below are only similar (…).");
  assert.equal(none.kind, "none");
  assert.match(none.text, /^No confirmed match in this collection: the hits below are only similar/);
  assert.equal(verdictLine("not verified: the hits are ranked by similarity only.").kind, "unverified");
  assert.equal(verdictLine("no hits: the index is empty.").kind, "other");
  for (const empty of ["", "  ", null, undefined, 3]) assert.deepEqual(verdictLine(empty), { text: "", kind: "" });
  // the first look's answer while a second look runs, as the widget words it
  const prefix = readFileSync(new URL("../../papyrus_widgets/widget.py", import.meta.url), "utf8").match(
    /^INTERIM_PREFIX = "([^"]*)"/m,
  )[1];
  const interim = verdictLine(`${prefix} no confirmed match in this collection: the hits below are only similar.`);
  assert.equal(interim.kind, "interim");
  assert.match(interim.text, /^So far, a second look running: no confirmed match/);
});
