// Validate an AsyncAPI document with the official parser (@asyncapi/parser).
//
//     node tests/js/asyncapi_check.mjs http://127.0.0.1:4000/asyncapi.json   (or a file path)
//
// Prints one JSON object: {"valid", "version", "diagnostics": [{severity, code, message, path}],
// "messages": [names], "channels": [addresses], "operations": [ids]} — the names as the parser
// understood them. Exit status 0 when the document parsed without an error or a warning, else 1.
import { readFile } from "node:fs/promises";
import { Parser } from "@asyncapi/parser";

const ERROR = 0;
const WARNING = 1;

async function load(source) {
  if (/^https?:\/\//.test(source)) {
    const response = await fetch(source);
    if (!response.ok) throw new Error(`GET ${source} answered ${response.status}`);
    return response.text();
  }
  return readFile(source, "utf8");
}

const source = process.argv[2];
if (!source) {
  console.error("usage: node asyncapi_check.mjs URL_OR_FILE");
  process.exit(2);
}
const { document, diagnostics } = await new Parser().parse(await load(source));
const report = {
  valid: Boolean(document) && !diagnostics.some((d) => d.severity <= WARNING),
  version: document?.version() ?? null,
  diagnostics: diagnostics.map((d) => ({
    severity: d.severity,
    code: d.code,
    message: d.message,
    path: d.path,
  })),
  messages: document ? document.allMessages().all().map((m) => m.name()) : [],
  channels: document ? document.allChannels().all().map((c) => c.address()) : [],
  operations: document ? document.allOperations().all().map((o) => o.id()) : [],
};
console.log(JSON.stringify(report));
process.exit(report.valid && !diagnostics.some((d) => d.severity === ERROR) ? 0 : 1);
