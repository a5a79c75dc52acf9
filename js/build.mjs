// Copy the widget's ESM and CSS from js/ into the package (papyrus_widgets/static/), then check
// that the copies are byte-identical. No dependencies: `node js/build.mjs`.
// `node js/build.mjs --check` only checks (exit 1 when static/ is stale), for CI.
import { copyFileSync, existsSync, mkdirSync, readFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..");
const target = join(root, "papyrus_widgets", "static");
const files = ["widget.js", "widget.css"];
const checkOnly = process.argv.includes("--check");

if (!checkOnly) mkdirSync(target, { recursive: true });
let failed = false;
for (const name of files) {
  const src = join(here, name);
  const dst = join(target, name);
  if (!checkOnly) copyFileSync(src, dst);
  if (!existsSync(dst) || !readFileSync(src).equals(readFileSync(dst))) {
    console.error(`${relative(root, dst)} differs from ${relative(root, src)}: run node js/build.mjs`);
    failed = true;
  } else {
    console.log(`${checkOnly ? "ok" : "copied"} ${relative(root, src)} -> ${relative(root, dst)}`);
  }
}
process.exit(failed ? 1 : 0);
