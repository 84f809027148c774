// Makes tests/vectors/appstate/push_name.json: one app-state patch
// (setting_pushName in critical_block) encoded by Baileys for a fixed key.
// Run from tests/interop: node appstate-gen-vectors.js > ../vectors/appstate/push_name.json
const { encodeSyncdPatch, newLTHashState } = require('baileys/lib/Utils/chat-utils');
const { proto } = require('baileys/WAProto');
(async () => {
  const keyData = Buffer.alloc(32).map((_, i) => i * 7 + 1);
  const keyId = Buffer.from([0, 0, 0, 0, 0x7a, 0x01]).toString('base64');
  const { patch, state } = await encodeSyncdPatch({
    type: 'critical_block',
    index: ['setting_pushName'],
    syncAction: { timestamp: 1700000000000, pushNameSetting: { name: 'Zoë Owner' } },
    apiVersion: 1,
    operation: proto.SyncdMutation.SyncdOperation.SET,
  }, keyId, newLTHashState(), async () => ({ keyData }));
  patch.version = { version: state.version };
  const bytes = proto.SyncdPatch.encode(patch).finish();
  console.log(JSON.stringify({
    key_data: keyData.toString('hex'),
    key_id: Buffer.from(keyId, 'base64').toString('hex'),
    patch: Buffer.from(bytes).toString('hex'),
    lthash: state.hash.toString('hex'),
  }, null, 1));
})();
