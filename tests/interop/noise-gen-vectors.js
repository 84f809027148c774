// Generates tests/vectors/noise/xeddsa.json with libsignal (the library
// Baileys uses) and its curve25519-js backend: public keys from private keys,
// X25519 agreements and XEdDSA signatures for fixed inputs.
//
// Run: node tests/interop/noise-gen-vectors.js  (after tests/interop/ensure.sh)
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const curve = require('libsignal/src/curve');
const curveJs = require('curve25519-js');

// Deterministic "random" bytes so the file only changes when the libraries do.
const det = (label, len) => {
    const out = [];
    for (let i = 0; out.length * 32 < len; i++) {
        out.push(crypto.createHash('sha256').update(`${label}/${i}`).digest());
    }
    return Buffer.concat(out).subarray(0, len);
};
const hex = (b) => Buffer.from(b).toString('hex');
const stripPrefix = (pub) => Buffer.from(pub).subarray(1);
// libsignal wants the 0x05 type byte in front of a Curve25519 public key.
const signalPub = (hexPub) => Buffer.concat([Buffer.from([5]), Buffer.from(hexPub, 'hex')]);

// Private keys as node's X25519 generator emits them (raw, unclamped) plus
// edge cases: all-zero low bits, top bit set.
const privates = [
    det('key-0', 32),
    det('key-1', 32),
    det('key-2', 32),
    Buffer.alloc(32, 0xff),
    Buffer.from(Array.from({ length: 32 }, (_, i) => i)),
];

const nodePublic = (priv) => {
    const der = Buffer.concat([
        Buffer.from('302e020100300506032b656e04220420', 'hex'),
        priv,
    ]);
    const key = crypto.createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
    const spki = crypto.createPublicKey(key).export({ format: 'der', type: 'spki' });
    return spki.subarray(spki.length - 32);
};

const keys = privates.map((priv) => {
    const pub = stripPrefix(curve.getPublicFromPrivateKey(priv));
    if (!pub.equals(nodePublic(priv))) {
        throw new Error('libsignal and node disagree on a public key');
    }
    return { private: hex(priv), public: hex(pub) };
});

const agreements = [];
for (let i = 0; i < privates.length; i++) {
    const j = (i + 1) % privates.length;
    const shared = curve.calculateAgreement(signalPub(keys[j].public), privates[i]);
    agreements.push({ private: keys[i].private, their_public: keys[j].public, shared: hex(shared) });
}

const messages = [
    Buffer.alloc(0),
    Buffer.from('WhatsAppLongTerm1'),
    det('message-32', 32),
    Buffer.concat([Buffer.from([5]), Buffer.from(keys[1].public, 'hex')]),
    det('message-300', 300),
];

// libsignal's calculateSignature: deterministic nonce.
const signatures = [];
// curve25519-js sign with 64 random bytes: the variant our signer produces.
const randomized = [];
privates.forEach((priv, i) => {
    const msg = messages[i % messages.length];
    const sig = curve.calculateSignature(priv, msg);
    if (!curve.verifySignature(signalPub(keys[i].public), msg, sig)) {
        throw new Error('libsignal rejects its own signature');
    }
    signatures.push({ public: keys[i].public, message: hex(msg), signature: hex(sig) });

    const random = det(`random-${i}`, 64);
    const rsig = Buffer.from(curveJs.sign(priv, msg, random));
    if (!curve.verifySignature(signalPub(keys[i].public), msg, rsig)) {
        throw new Error('libsignal rejects a randomized signature');
    }
    randomized.push({
        private: keys[i].private,
        message: hex(msg),
        random: hex(random),
        signature: hex(rsig),
    });
});

const out = {
    generator: 'tests/interop/noise-gen-vectors.js (libsignal 6.0.0, curve25519-js)',
    keys,
    agreements,
    signatures,
    randomized_signatures: randomized,
};
const file = path.join(__dirname, '..', 'vectors', 'noise', 'xeddsa.json');
fs.writeFileSync(file, JSON.stringify(out, null, 2) + '\n');
console.log(`wrote ${file}`);
