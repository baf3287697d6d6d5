// Validates an AsyncAPI document with the official parser (@asyncapi/parser: the JSON Schema of the spec
// plus its Spectral rules, and every $ref resolved). Prints each finding; exits 1 on any error or
// warning, so the test command fails on them. Informational hints (e.g. that a newer spec version
// exists) are printed only. Usage: node asyncapi-validate.cjs <proto dir with node_modules> <document>
'use strict';
const fs = require('fs');
const path = require('path');
const { createRequire } = require('module');

const [protoDir, file] = process.argv.slice(2);
const requireFromProto = createRequire(path.join(protoDir, 'package.json'));
const { Parser } = requireFromProto('@asyncapi/parser');
const severities = ['error', 'warning', 'info', 'hint'];

(async () => {
  const text = fs.readFileSync(file, 'utf8');
  const { document, diagnostics } = await new Parser().parse(text, { source: file });
  let failures = 0;
  for (const d of diagnostics) {
    const severity = severities[d.severity] || String(d.severity);
    if (d.severity <= 1) failures += 1;
    console.error(`asyncapi-validate: ${severity} ${d.code} at ${d.path.join('/') || '/'}: ${d.message}`);
  }
  if (!document || failures > 0) {
    console.error(`asyncapi-validate: ${file} is not a valid AsyncAPI document (${failures} finding(s))`);
    process.exit(1);
  }
  console.log(
    `asyncapi-validate: ok (${file}: AsyncAPI ${document.version()}, ` +
      `${document.channels().length} channels, ${document.messages().length} messages)`,
  );
})().catch((err) => {
  console.error(`asyncapi-validate: ${err.stack || err}`);
  process.exit(2);
});
