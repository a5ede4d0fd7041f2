// Builds the appliance's web UI into ui/dist: the scripts and one stylesheet bundled by
// esbuild from src/ (and the npm packages pinned by package-lock.json), their names
// carrying a content hash (the machine's page, with uPlot, is a chunk loaded when first
// shown); index.html naming them; a gzip twin of every file, which the appliance serves
// to browsers that take gzip. Prints each file's size and the first load's compressed
// total.
//
//   node build.mjs            # from appliance/ui, after `npm ci`
import { build } from "esbuild";
import { gzipSync } from "node:zlib";
import { mkdirSync, readFileSync, rmSync, writeFileSync, readdirSync, statSync } from "node:fs";
import { join, relative, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "dist");
rmSync(dist, { recursive: true, force: true });
mkdirSync(join(dist, "assets"), { recursive: true });

const result = await build({
  entryPoints: [join(here, "src/main.jsx")],
  bundle: true,
  minify: true,
  format: "esm",
  // The machine's page (with uPlot) is its own chunk, loaded when first shown.
  splitting: true,
  target: ["chrome110", "firefox110", "safari16"],
  jsx: "automatic",
  jsxImportSource: "preact",
  outdir: join(dist, "assets"),
  entryNames: "[name]-[hash]",
  chunkNames: "[name]-[hash]",
  assetNames: "[name]-[hash]",
  metafile: true,
  legalComments: "none",
  logLevel: "warning",
});

const outputs = result.metafile.outputs;
const rel = (p) => relative(dist, join(process.cwd(), p));
const entry = Object.keys(outputs).find((p) => outputs[p].entryPoint && p.endsWith(".js"));
const styles = Object.keys(outputs).filter((p) => p.endsWith(".css"));
if (!entry || styles.length !== 1) throw new Error(`expected one entry script and one stylesheet, got ${Object.keys(outputs)}`);
const script = rel(entry);
const style = rel(styles[0]);
// What the first load fetches: the page, the stylesheet, the entry script and the chunks
// it imports statically (dynamically imported ones come later).
const firstFiles = new Set(["index.html", style, script]);
for (const i of outputs[entry].imports) if (i.kind === "import-statement") firstFiles.add(rel(i.path));

const page = readFileSync(join(here, "src/index.html"), "utf8")
  .replace("%STYLE%", `/${style}`)
  .replace("%SCRIPT%", `/${script}`);
writeFileSync(join(dist, "index.html"), page);

function files(dir) {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? files(p) : [p];
  });
}
let firstLoad = 0;
for (const f of files(dist)) {
  const bytes = readFileSync(f);
  // mtime 0 in the gzip header: the same input gives the same bytes.
  const gz = gzipSync(bytes, { level: 9 });
  writeFileSync(`${f}.gz`, gz);
  if (firstFiles.has(relative(dist, f))) firstLoad += gz.length;
  console.log(`${relative(dist, f).padEnd(32)} ${String(bytes.length).padStart(8)} bytes, gzip ${String(gz.length).padStart(7)}`);
}
console.log(`first load (gzip): ${firstLoad} bytes`);
