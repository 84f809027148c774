// Canonical JSON form of a Baileys BinaryNode, shared by the codec vector
// scripts: {tag, attrs: [[key, value], ...], content: null | [tree...] |
// {bytes: hex} | {str: s}}. Attribute order is Baileys' object order.
'use strict';

function canonical(n) {
  let content = null;
  if (Array.isArray(n.content)) {
    content = n.content.map(canonical);
  } else if (Buffer.isBuffer(n.content) || n.content instanceof Uint8Array) {
    content = { bytes: Buffer.from(n.content).toString('hex') };
  } else if (typeof n.content === 'string') {
    content = { str: n.content };
  } else if (n.content !== undefined && n.content !== null) {
    throw new Error(`unexpected content in <${n.tag}>: ${typeof n.content}`);
  }
  const attrs = Object.entries(n.attrs || {}).map(([k, v]) => [k, String(v)]);
  return { tag: n.tag, attrs, content };
}

module.exports = { canonical };
