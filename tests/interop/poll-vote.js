// Poll votes with Baileys' own functions.
//
// `node poll-vote.js gen > ../vectors/poll/baileys.json` makes vectors for
// fixed inputs: a PollVoteMessage sealed with Baileys' hkdf and
// aesEncryptGCM under the key WhatsApp derives for a vote, checked by
// opening it with Baileys' decryptPollVote (what Baileys runs on every
// vote it receives).
//
// Without arguments it opens votes: each stdin line is a JSON object
// {secret, poll_id, creator, voter, payload, iv} (bytes in hex); each
// answer line is {options: [hex SHA-256 of each option chosen]} or
// {error}.
const readline = require('readline');
const { decryptPollVote } = require('baileys/lib/Utils/process-message');
const { hkdf, aesEncryptGCM, sha256 } = require('baileys/lib/Utils/crypto');
const { proto } = require('baileys/WAProto');

const hex = (b) => Buffer.from(b).toString('hex');
const fill = (n, f) => Buffer.alloc(n).map((_, i) => f(i) & 0xff);

const open = (v) => decryptPollVote(
  { encPayload: Buffer.from(v.payload, 'hex'), encIv: Buffer.from(v.iv, 'hex') },
  {
    pollEncKey: Buffer.from(v.secret, 'hex'),
    pollCreatorJid: v.creator,
    pollMsgId: v.poll_id,
    voterJid: v.voter,
  },
);

async function gen() {
  const secret = fill(32, (i) => i * 7 + 3);
  const pollId = '3EB0C431D8E2A5F1B7';
  const creator = '15550001111@s.whatsapp.net';
  const voter = '15550002222@s.whatsapp.net';
  const options = ['pizza', 'salad', 'soup'];
  const chosen = ['soup', 'pizza'];
  const iv = fill(12, (i) => 0xa0 + i);
  const plain = proto.Message.PollVoteMessage.encode({
    selectedOptions: chosen.map((o) => sha256(Buffer.from(o))),
  }).finish();
  const key = await hkdf(secret, 32, { info: `${pollId}${creator}${voter}Poll Vote` });
  const payload = aesEncryptGCM(plain, key, iv, Buffer.from(`${pollId}\u0000${voter}`));
  const vector = {
    secret: hex(secret), poll_id: pollId, creator, voter, options, chosen,
    iv: hex(iv), payload: hex(payload),
  };
  const opened = open(vector).selectedOptions.map(hex);
  const expected = chosen.map((o) => hex(sha256(Buffer.from(o))));
  if (JSON.stringify(opened) !== JSON.stringify(expected)) {
    throw new Error('decryptPollVote does not open the vector');
  }
  vector.chosen_hashes = expected;
  console.log(JSON.stringify(vector, null, 2));
}

if (process.argv[2] === 'gen') {
  gen().catch((e) => { console.error(e); process.exit(1); });
} else {
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    try {
      const vote = open(JSON.parse(line));
      console.log(JSON.stringify({ options: vote.selectedOptions.map(hex) }));
    } catch (e) {
      console.log(JSON.stringify({ error: String(e && e.message || e) }));
    }
  });
}
