// A Signal peer made of independent code: libsignal-node (npm `libsignal`)
// for pairwise sessions and Baileys' own sender key code (WASignalGroup) for
// groups, with a store that serializes every record the way Baileys persists
// it. Driven by tests/signal_interop.rs over stdin/stdout, one JSON object
// per line each way; every request gets exactly one answer, either
// {"ok":true,...} or {"error":"..."}.
//
// Requests ("op" plus fields; bytes are hex, addresses "name.device"):
//   init                                   -> identity, registrationId, signedPreKey, preKeys
//   process_bundle {addr, bundle}          -> {}
//   encrypt {addr, plaintext}              -> type ("pkmsg"|"msg"), body
//   decrypt {addr, type, body}             -> plaintext
//   has_prekey {id}                        -> present
//   pad {plaintext} / unpad {padded}       -> padded / plaintext (Baileys' helpers)
//   sk_create {group, sender}              -> skdm
//   sk_process {group, sender, skdm}       -> {}
//   sk_encrypt {group, sender, plaintext}  -> body
//   sk_decrypt {group, sender, body}       -> plaintext
'use strict';

const readline = require('readline');
const util = require('util');

// libsignal-node logs to the console (stdout); keep stdout for answers.
const verbose = !!process.env.SIGNAL_PEER_VERBOSE;
for (const level of ['log', 'info', 'warn', 'error', 'debug']) {
    console[level] = (...args) => {
        if (verbose) process.stderr.write(`${util.format(...args)}\n`);
    };
}

const libsignal = require('libsignal');
const { BufferJSON, writeRandomPadMax16, unpadRandomMax16 } = require('baileys');
const {
    GroupCipher,
    GroupSessionBuilder,
    SenderKeyDistributionMessage,
    SenderKeyName,
    SenderKeyRecord,
} = require('baileys/WASignalGroup');

const hex = (b) => Buffer.from(b).toString('hex');
const unhex = (s) => Buffer.from(s, 'hex');
const prefixed = (raw32) => Buffer.concat([Buffer.from([5]), unhex(raw32)]);
const address = (text) => libsignal.ProtocolAddress.from(text);

const identity = libsignal.keyhelper.generateIdentityKeyPair();
const registrationId = libsignal.keyhelper.generateRegistrationId();
const signedPreKey = libsignal.keyhelper.generateSignedPreKey(identity, 1);
const preKeys = new Map();
for (let id = 1; id <= 8; id++) {
    preKeys.set(id, libsignal.keyhelper.generatePreKey(id).keyPair);
}

// Records live only in serialized form, so a failed operation that mutated
// an in-memory copy does not leak into the next one (as with Baileys' store).
const sessions = new Map();
const senderKeys = new Map();

const storage = {
    async loadSession(id) {
        const stored = sessions.get(id);
        return stored ? libsignal.SessionRecord.deserialize(JSON.parse(stored)) : undefined;
    },
    async storeSession(id, record) {
        sessions.set(id, JSON.stringify(record.serialize()));
    },
    isTrustedIdentity() {
        return true;
    },
    async loadPreKey(id) {
        return preKeys.get(Number(id));
    },
    async removePreKey(id) {
        preKeys.delete(Number(id));
    },
    async loadSignedPreKey(id) {
        return Number(id) === signedPreKey.keyId ? signedPreKey.keyPair : undefined;
    },
    getOurRegistrationId() {
        return registrationId;
    },
    getOurIdentity() {
        return identity;
    },
    async loadSenderKey(name) {
        const stored = senderKeys.get(name);
        return stored ? new SenderKeyRecord(JSON.parse(stored, BufferJSON.reviver)) : undefined;
    },
    async storeSenderKey(name, record) {
        senderKeys.set(name, JSON.stringify(record.serialize(), BufferJSON.replacer));
    },
};

const senderKeyName = (group, sender) => new SenderKeyName(group, address(sender)).toString();

async function ensureSenderKeyRecord(name) {
    if (!senderKeys.has(name)) {
        await storage.storeSenderKey(name, new SenderKeyRecord());
    }
}

const ops = {
    async init() {
        return {
            identity: hex(identity.pubKey.subarray(1)),
            registrationId,
            signedPreKey: {
                id: signedPreKey.keyId,
                public: hex(signedPreKey.keyPair.pubKey.subarray(1)),
                signature: hex(signedPreKey.signature),
            },
            preKeys: [...preKeys].map(([id, pair]) => ({ id, public: hex(pair.pubKey.subarray(1)) })),
        };
    },
    async process_bundle({ addr, bundle }) {
        const device = {
            registrationId: bundle.registrationId,
            identityKey: prefixed(bundle.identity),
            signedPreKey: {
                keyId: bundle.signedPreKey.id,
                publicKey: prefixed(bundle.signedPreKey.public),
                signature: unhex(bundle.signedPreKey.signature),
            },
        };
        if (bundle.preKey) {
            device.preKey = { keyId: bundle.preKey.id, publicKey: prefixed(bundle.preKey.public) };
        }
        await new libsignal.SessionBuilder(storage, address(addr)).initOutgoing(device);
        return {};
    },
    async encrypt({ addr, plaintext }) {
        const cipher = new libsignal.SessionCipher(storage, address(addr));
        const { type, body } = await cipher.encrypt(unhex(plaintext));
        return { type: type === 3 ? 'pkmsg' : 'msg', body: hex(body) };
    },
    async decrypt({ addr, type, body }) {
        const cipher = new libsignal.SessionCipher(storage, address(addr));
        const plaintext = type === 'pkmsg'
            ? await cipher.decryptPreKeyWhisperMessage(unhex(body))
            : await cipher.decryptWhisperMessage(unhex(body));
        return { plaintext: hex(plaintext) };
    },
    async has_prekey({ id }) {
        return { present: preKeys.has(id) };
    },
    async pad({ plaintext }) {
        return { padded: hex(writeRandomPadMax16(unhex(plaintext))) };
    },
    async unpad({ padded }) {
        return { plaintext: hex(unpadRandomMax16(unhex(padded))) };
    },
    async sk_create({ group, sender }) {
        const name = senderKeyName(group, sender);
        await ensureSenderKeyRecord(name);
        const message = await new GroupSessionBuilder(storage).create(name);
        return { skdm: hex(message.serialize()) };
    },
    async sk_process({ group, sender, skdm }) {
        const name = senderKeyName(group, sender);
        await ensureSenderKeyRecord(name);
        const message = new SenderKeyDistributionMessage(null, null, null, null, unhex(skdm));
        await new GroupSessionBuilder(storage).process(name, message);
        return {};
    },
    async sk_encrypt({ group, sender, plaintext }) {
        const cipher = new GroupCipher(storage, senderKeyName(group, sender));
        return { body: hex(await cipher.encrypt(unhex(plaintext))) };
    },
    async sk_decrypt({ group, sender, body }) {
        const cipher = new GroupCipher(storage, senderKeyName(group, sender));
        return { plaintext: hex(await cipher.decrypt(unhex(body))) };
    },
};

const answer = (value) => process.stdout.write(`${JSON.stringify(value)}\n`);

async function handle(line) {
    let request;
    try {
        request = JSON.parse(line);
    } catch (e) {
        return answer({ error: `bad request line: ${e.message}` });
    }
    const op = ops[request.op];
    if (!op) return answer({ error: `unknown op ${request.op}` });
    try {
        answer({ ok: true, ...(await op(request)) });
    } catch (e) {
        answer({ error: `${e && e.name}: ${e && e.message}` });
    }
}

// One request at a time, in order: libsignal's per-address queue would
// otherwise reorder nothing, but the test relies on strict sequencing.
let queue = Promise.resolve();
readline.createInterface({ input: process.stdin }).on('line', (line) => {
    if (line.trim() === '') return;
    queue = queue.then(() => handle(line));
});
