// Build the browser bundle into dist/ (index.html, app-<hash>.js, app-<hash>.css), or with
// --tests the node tests into dist-test/ (run them with `node --test dist-test/`).
import { createHash } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));

if (process.argv.includes("--tests")) {
  const out = join(here, "dist-test");
  rmSync(out, { recursive: true, force: true });
  const tests = readdirSync(join(here, "test")).filter((n) => n.endsWith(".test.ts"));
  await esbuild.build({
    entryPoints: tests.map((n) => join(here, "test", n)),
    outdir: out, outExtension: { ".js": ".mjs" }, bundle: true, platform: "node",
    format: "esm", target: "node20", sourcemap: "inline", logLevel: "warning",
  });
} else {
  const out = join(here, "dist");
  rmSync(out, { recursive: true, force: true });
  mkdirSync(out);
  const result = await esbuild.build({
    entryPoints: [join(here, "src", "app.ts"), join(here, "src", "app.css")],
    outdir: out, bundle: true, minify: true, format: "esm", target: ["chrome110", "firefox110", "safari16"],
    entryNames: "[name]-[hash]", write: false, logLevel: "warning", legalComments: "none",
  });
  const names = {};
  for (const file of result.outputFiles) {
    const name = file.path.slice(out.length + 1);
    writeFileSync(file.path, file.contents);
    names[name.split("-")[0] + (name.endsWith(".css") ? ".css" : ".js")] = name;
  }
  // index.html names the hashed files, with subresource integrity
  const sri = (name) => "sha384-" + createHash("sha384").update(readFileSync(join(out, name))).digest("base64");
  const html = readFileSync(join(here, "src", "index.html"), "utf8")
    .replace("app.js", `${names["app.js"]}" integrity="${sri(names["app.js"])}`)
    .replace("app.css", `${names["app.css"]}" integrity="${sri(names["app.css"])}`);
  writeFileSync(join(out, "index.html"), html);
}
