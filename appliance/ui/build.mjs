// Builds the appliance's web UI into ui/dist: one script and one stylesheet bundled by
// esbuild from src/ (and the npm packages pinned by package-lock.json), their names
// carrying a content hash; index.html naming them; a gzip twin of every file, which the
// appliance serves to browsers that take gzip. Prints each file's size and the first
// load's compressed total.
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
  target: ["chrome110", "firefox110", "safari16"],
  jsx: "automatic",
  jsxImportSource: "preact",
  outdir: join(dist, "assets"),
  entryNames: "[name]-[hash]",
  assetNames: "[name]-[hash]",
  metafile: true,
  legalComments: "none",
  logLevel: "warning",
});

const outputs = Object.keys(result.metafile.outputs).map((p) => relative(dist, join(process.cwd(), p)));
const script = outputs.find((p) => p.endsWith(".js"));
const style = outputs.find((p) => p.endsWith(".css"));
if (!script || !style) throw new Error(`expected one .js and one .css, got ${outputs}`);

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
  firstLoad += gz.length;
  console.log(`${relative(dist, f).padEnd(32)} ${String(bytes.length).padStart(8)} bytes, gzip ${String(gz.length).padStart(7)}`);
}
console.log(`first load (gzip): ${firstLoad} bytes`);
