// Makes tests/vectors/appstate/actions.json: app-state patches Baileys
// encodes for a fixed key, for the actions wagate reads: a contact in
// critical_unblock_low, a mute in regular_high, and in regular_low an
// archive, a pin, then the same chat unarchived (an index set twice takes
// its old value out of the LTHash). Each patch is followed by the
// collection's LTHash after it.
// Run from tests/interop: node appstate-actions-gen-vectors.js > ../vectors/appstate/actions.json
const { encodeSyncdPatch, newLTHashState } = require('baileys/lib/Utils/chat-utils');
const { proto } = require('baileys/WAProto');
const SET = proto.SyncdMutation.SyncdOperation.SET;
const chat = '15550001111@s.whatsapp.net';
const steps = [
  { type: 'critical_unblock_low', index: ['contact', chat], apiVersion: 2,
    syncAction: { timestamp: 1700000000000, contactAction: { fullName: 'Ana Lima', firstName: 'Ana' } } },
  { type: 'regular_high', index: ['mute', chat], apiVersion: 2,
    syncAction: { timestamp: 1700000001000, muteAction: { muted: true, muteEndTimestamp: 1800000000000 } } },
  { type: 'regular_low', index: ['archive', chat], apiVersion: 3,
    syncAction: { timestamp: 1700000002000, archiveChatAction: { archived: true } } },
  { type: 'regular_low', index: ['pin_v1', chat], apiVersion: 5,
    syncAction: { timestamp: 1700000003000, pinAction: { pinned: true } } },
  { type: 'regular_low', index: ['archive', chat], apiVersion: 3,
    syncAction: { timestamp: 1700000004000, archiveChatAction: { archived: false } } },
];
(async () => {
  const keyData = Buffer.alloc(32).map((_, i) => i * 11 + 3);
  const keyId = Buffer.from([0, 0, 0, 0, 0x7a, 0x02]).toString('base64');
  const states = {};
  const patches = [];
  for (const step of steps) {
    const before = states[step.type] || newLTHashState();
    const { patch, state } = await encodeSyncdPatch({ ...step, operation: SET }, keyId, before, async () => ({ keyData }));
    states[step.type] = state;
    patch.version = { version: state.version };
    patches.push({
      collection: step.type,
      patch: Buffer.from(proto.SyncdPatch.encode(patch).finish()).toString('hex'),
      lthash: Buffer.from(state.hash).toString('hex'),
    });
  }
  console.log(JSON.stringify({
    key_data: keyData.toString('hex'),
    key_id: Buffer.from(keyId, 'base64').toString('hex'),
    chat,
    patches,
  }, null, 1));
})();
