// Generates tests/vectors/signal/libsignal.json: messages made by
// libsignal-node (the library Baileys uses) and Baileys' sender key code for
// a receiver whose private keys are fixed, so our implementation can be
// checked against them without node: three pkmsgs opening one session (with
// a one-time prekey), one opening a session without, and a sender key
// distribution message with skmsgs.
//
// Run: node tests/interop/signal-gen-vectors.js  (after tests/interop/ensure.sh)
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const libsignal = require('libsignal');
const curve = require('libsignal/src/curve');
const { BufferJSON } = require('baileys');
const {
    GroupCipher,
    GroupSessionBuilder,
    SenderKeyName,
    SenderKeyRecord,
} = require('baileys/WASignalGroup');

const hex = (b) => Buffer.from(b).toString('hex');
const fixedPair = (label) => {
    const privKey = crypto.createHash('sha256').update(label).digest();
    return { privKey, pubKey: curve.getPublicFromPrivateKey(privKey) };
};

// The receiver ("bob"): fixed keys.
const bob = {
    identity: fixedPair('bob identity'),
    registrationId: 4321,
    signed: { keyId: 7, keyPair: fixedPair('bob signed prekey') },
    preKey: { keyId: 300, keyPair: fixedPair('bob one-time prekey') },
};
bob.signed.signature = curve.calculateSignature(bob.identity.privKey, bob.signed.keyPair.pubKey);

function senderStore(identity, registrationId) {
    const sessions = new Map();
    const senderKeys = new Map();
    return {
        async loadSession(id) {
            const s = sessions.get(id);
            return s ? libsignal.SessionRecord.deserialize(JSON.parse(s)) : undefined;
        },
        async storeSession(id, record) {
            sessions.set(id, JSON.stringify(record.serialize()));
        },
        isTrustedIdentity: () => true,
        getOurIdentity: () => identity,
        getOurRegistrationId: () => registrationId,
        async loadSenderKey(name) {
            const s = senderKeys.get(name);
            return s ? new SenderKeyRecord(JSON.parse(s, BufferJSON.reviver)) : undefined;
        },
        async storeSenderKey(name, record) {
            senderKeys.set(name, JSON.stringify(record.serialize(), BufferJSON.replacer));
        },
    };
}

async function session(withPreKey, count, label) {
    const identity = libsignal.keyhelper.generateIdentityKeyPair();
    const registrationId = libsignal.keyhelper.generateRegistrationId();
    const store = senderStore(identity, registrationId);
    const addr = new libsignal.ProtocolAddress('bob', 0);
    const device = {
        registrationId: bob.registrationId,
        identityKey: bob.identity.pubKey,
        signedPreKey: {
            keyId: bob.signed.keyId,
            publicKey: bob.signed.keyPair.pubKey,
            signature: bob.signed.signature,
        },
    };
    if (withPreKey) {
        device.preKey = { keyId: bob.preKey.keyId, publicKey: bob.preKey.keyPair.pubKey };
    }
    await new libsignal.SessionBuilder(store, addr).initOutgoing(device);
    const cipher = new libsignal.SessionCipher(store, addr);
    const messages = [];
    for (let i = 0; i < count; i++) {
        const plaintext = Buffer.from(`${label} ${i}`);
        const { type, body } = await cipher.encrypt(plaintext);
        if (type !== 3) throw new Error('expected a pkmsg');
        messages.push({ body: hex(body), plaintext: hex(plaintext) });
    }
    return {
        sender_identity: hex(identity.pubKey.subarray(1)),
        sender_registration_id: registrationId,
        messages,
    };
}

async function group() {
    const store = senderStore(null, 0);
    const name = new SenderKeyName('120363000000000002@g.us', new libsignal.ProtocolAddress('alice', 1)).toString();
    await store.storeSenderKey(name, new SenderKeyRecord());
    const distribution = await new GroupSessionBuilder(store).create(name);
    const cipher = new GroupCipher(store, name);
    const messages = [];
    for (let i = 0; i < 4; i++) {
        const plaintext = Buffer.from(`group ${i}`);
        messages.push({ body: hex(await cipher.encrypt(plaintext)), plaintext: hex(plaintext) });
    }
    return { distribution: hex(distribution.serialize()), messages };
}

(async () => {
    const vectors = {
        generator: 'tests/interop/signal-gen-vectors.js (libsignal 6.0.0, baileys 6.17.16)',
        receiver: {
            identity_private: hex(bob.identity.privKey),
            registration_id: bob.registrationId,
            signed_pre_key: { id: bob.signed.keyId, private: hex(bob.signed.keyPair.privKey) },
            pre_key: { id: bob.preKey.keyId, private: hex(bob.preKey.keyPair.privKey) },
        },
        with_pre_key: await session(true, 3, 'with prekey'),
        without_pre_key: await session(false, 2, 'without prekey'),
        group: await group(),
    };
    const out = path.join(__dirname, '..', 'vectors', 'signal', 'libsignal.json');
    fs.mkdirSync(path.dirname(out), { recursive: true });
    fs.writeFileSync(out, `${JSON.stringify(vectors, null, 2)}\n`);
    process.stdout.write(`wrote ${out}\n`);
})().catch((e) => {
    process.stderr.write(`${e.stack}\n`);
    process.exit(1);
});
