// Writes tests/vectors/codec/baileys.json: stanzas encoded by Baileys'
// encodeBinaryNode, with the tree Baileys' decodeBinaryNode reads back.
//
//   node tests/interop/codec-gen-vectors.js [out.json]
//
// Each vector is {name, hex, tree}: `hex` is the node without the frame flag
// byte (Baileys prepends 0x00; this script checks and strips it), `tree` the
// canonical form shared with codec-decode.js:
//   {tag, attrs: [[key, value], ...], content: null | [tree...] | {bytes: hex} | {str: s}}
// The installed Baileys speaks token dictionary 2 (intro `WA 06 02`).
'use strict';

const fs = require('fs');
const path = require('path');
const { encodeBinaryNode, decodeBinaryNode } = require('baileys');
const { canonical } = require('./codec-tree');

const bytes = (n, seed) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff));
const node = (tag, attrs = {}, content) => ({ tag, attrs, content });

const stanzas = [
  ['xmlstreamend', node('xmlstreamend')],
  ['iq-pair-device', node('iq', { from: '@s.whatsapp.net', type: 'set', id: '1723456789', xmlns: 'md' }, [
    node('pair-device', {}, [
      node('ref', {}, Buffer.from('2@Xr1vYVqKc9Nf0XZ3b3BqQ1dPLkFhRm9uZ3Vz,FqNb0kBz3yq2XGv3d1pDvGqNW8QH3R0=')),
      node('ref', {}, Buffer.from('2@6J9mB0y3QhQ2Yz1Vt8Ww1oA6Zk3r5sT0,r5sT0Yz1Vt8Ww1oA6Zk3QhQ2=')),
      node('ref', {}, Buffer.from('2@bZ9pN4Lq0c1oK7sH2dE5fJ8gR3tU6vW,9gR3tU6vWbZ9pN4Lq0c1o=')),
    ]),
  ])],
  ['iq-result-to-server', node('iq', { to: '@s.whatsapp.net', type: 'result', id: '1723456789' })],
  ['message-enc-200', node('message', {
    from: '15551234567:12@s.whatsapp.net', id: '3EB0C431FD8A5E3B1C29A4', t: '1750000000', type: 'text', notify: 'Alice',
  }, [node('enc', { v: '2', type: 'msg' }, bytes(200, 7))])],
  ['message-pkmsg-group', node('message', {
    from: '120363025246125486@g.us', participant: '4915112345678:3@s.whatsapp.net', id: 'ABCDEF0123456789', t: '1750000001', type: 'text',
  }, [node('enc', { v: '2', type: 'skmsg' }, bytes(90, 3)), node('enc', { v: '2', type: 'pkmsg' }, bytes(300, 11))])],
  ['receipt-read', node('receipt', { id: '3EB0C431FD8A5E3B1C29A4', to: '15551234567@s.whatsapp.net', type: 'read', t: '1750000002' })],
  ['receipt-list', node('receipt', { id: '3EB0AA', from: '4915112345678@s.whatsapp.net', type: 'read-self' }, [
    node('list', {}, [node('item', { id: '3EB0BB' }), node('item', { id: '3EB0CC' })]),
  ])],
  ['ack-ad-jid', node('ack', { class: 'receipt', id: '3EB0C431FD8A5E3B1C2', from: '15551234567:5@s.whatsapp.net', type: 'read' })],
  ['ack-lid-device', node('ack', { class: 'message', id: '3EB0C431', to: '987654321098765:2@lid', participant: '987654321098765@lid' })],
  ['ad-jid-device-0', node('ack', { class: 'message', id: '3EB0C431', to: '15551234567:0@s.whatsapp.net' })],
  ['status-broadcast', node('message', { to: 'status@broadcast', id: '77', type: 'text' })],
  ['packed-strings', node('props', {
    nibble: '1750000000', odd: '12345', dash: '2.3000.1019-5', hex: '3EB0C431FD8A5E3B1C2', hexodd: 'ABC', lowerhex: '3eb0c431fd',
    long: '1'.repeat(128), max: '9'.repeat(127),
  })],
  ['empty-attr', node('presence', { type: 'available', name: '' })],
  ['content-token', node('presence', {}, 'available')],
  ['content-raw-string', node('body', {}, 'hello world')],
  ['content-nibble', node('count', {}, '42')],
  ['content-jid', node('participant', {}, '4915112345678@s.whatsapp.net')],
  ['content-empty-list', node('list', { type: 'get' }, [])],
  ['no-content', node('ping')],
  ['unicode', node('message', { notify: 'Zoë 🎉 日本語', id: 'ünï' }, [node('body', {}, Buffer.from('héllo ✓ 👋'))])],
  ['nested', node('iq', { type: 'get', xmlns: 'usync', id: '9' }, [
    node('usync', { sid: '1', mode: 'query', last: 'true', index: '0', context: 'message' }, [
      node('query', {}, [node('devices', { version: '2' })]),
      node('list', {}, [node('user', { jid: '15551234567@s.whatsapp.net' }, [node('devices', {}, [node('device-list', {}, [node('device', { id: '0' }), node('device', { id: '3', 'key-index': '1' })])])])]),
    ]),
  ])],
  ['binary-300', node('enc', { v: '2' }, bytes(300, 1))],
  ['binary-70000', node('media', {}, bytes(70000, 5))],
  ['list16', node('list', {}, Array.from({ length: 300 }, (_, i) => node('item', { id: String(i) })))],
];

// Dictionary-2 double-byte tokens from each of the four dictionaries, as tag,
// key and value, so the table layout is checked end to end.
const { DOUBLE_BYTE_TOKENS } = require('baileys/lib/WABinary/constants');
const doubles = [];
for (let d = 0; d < 4; d++) {
  for (const i of [0, 1, 77, 254, 255]) {
    const t = DOUBLE_BYTE_TOKENS[d][i];
    doubles.push(node(t, { [t]: t }));
  }
}
stanzas.push(['double-byte-tokens', node('tokens', {}, doubles)]);

async function main() {
  const out = [];
  for (const [name, input] of stanzas) {
    const framed = encodeBinaryNode(input);
    if (framed[0] !== 0) throw new Error(`${name}: expected a 0x00 flag byte`);
    const decoded = await decodeBinaryNode(framed);
    out.push({ name, hex: framed.subarray(1).toString('hex'), tree: canonical(decoded) });
  }
  const file = process.argv[2] || path.join(__dirname, '..', 'vectors', 'codec', 'baileys.json');
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, JSON.stringify(out, null, 1) + '\n');
  console.error(`${out.length} vectors -> ${file}`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
