// Bundle the widget's ESM sources (js/src/widget.js and the parts it imports) into the one file
// anywidget serves: papyrus_widgets/static/widget.js (git-ignored, shipped in the wheel and sdist).
// Run from anywhere: `node js/build.mjs` (what `make static` does, after `npm ci` in js/), or
// `node js/build.mjs --watch` to rebuild on every save (with ANYWIDGET_HMR=1 the notebook reloads
// the view). The CSS needs no build: papyrus_widgets/static/widget.css is its only source.
import { mkdirSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..");
const outfile = join(root, "papyrus_widgets", "static", "widget.js");

const options = {
  entryPoints: [join(here, "src", "widget.js")],
  outfile,
  bundle: true,
  format: "esm",
  target: "es2020",
  charset: "utf8",
  legalComments: "none",
  logLevel: "warning",
  // The first line says where the file comes from (anywidget and the tests read it as it is).
  banner: { js: "// papyrus-widgets PapyrusSearch view: built by js/build.mjs from js/src/*.js. Do not edit; edit js/src/." },
};

mkdirSync(dirname(outfile), { recursive: true });
if (process.argv.includes("--watch")) {
  const ctx = await esbuild.context({ ...options, logLevel: "info" });
  await ctx.watch();
  console.log(`watching js/src/ → ${relative(root, outfile)} (Ctrl+C stops)`);
} else {
  await esbuild.build(options);
  console.log(`built ${relative(root, outfile)} from js/src/`);
}
