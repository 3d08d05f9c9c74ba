// Bundles web/src into orchestrator/web/static/ (committed: `make demo` needs no Node.js at run time).
// `make web` (or `npm run build` here) after changing anything under web/src.
// WEB_OUT=DIR bundles into DIR instead (tests/test_web_bundle.py: the committed bundle is this build).
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = process.env.WEB_OUT || join(here, "..", "orchestrator", "web", "static");
mkdirSync(out, { recursive: true });

await build({
  entryPoints: { panel: join(here, "src", "panel.js"), "heartbeat-worker": join(here, "src", "heartbeat-worker.js") },
  outdir: out,
  bundle: true,
  format: "esm",
  platform: "browser",
  target: ["es2020"],
  minify: true,
  legalComments: "linked", // the licences of the bundled packages, next to the bundles
  logLevel: "info",
});
copyFileSync(join(here, "src", "index.html"), join(out, "index.html"));
copyFileSync(join(here, "src", "panel.css"), join(out, "panel.css"));
copyFileSync(join(here, "node_modules", "uplot", "dist", "uPlot.min.css"), join(out, "uPlot.min.css"));
