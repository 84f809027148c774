// Decodes nodes with Baileys' decodeBinaryNode and prints their canonical
// trees (see codec-tree.js) as JSON on stdout.
//
//   node tests/interop/codec-decode.js input.json
//
// input.json is a list of {name, hex}, each hex one node without the frame
// flag byte. Output is a list of {name, tree} or {name, error}.
'use strict';

const fs = require('fs');
const { decodeBinaryNode } = require('baileys');
const { canonical } = require('./codec-tree');

async function main() {
  const input = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  const out = [];
  for (const { name, hex } of input) {
    try {
      const node = await decodeBinaryNode(Buffer.concat([Buffer.from([0]), Buffer.from(hex, 'hex')]));
      out.push({ name, tree: canonical(node) });
    } catch (e) {
      out.push({ name, error: String(e && e.message ? e.message : e) });
    }
  }
  process.stdout.write(JSON.stringify(out));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
