// Answers XEdDSA and X25519 questions with libsignal (the library Baileys
// uses), one request per line on stdin, one answer per line on stdout:
//   public <priv>             -> <pub>
//   dh <priv> <pub>           -> <shared>
//   sign <priv> <msg>         -> <signature>
//   verify <pub> <msg> <sig>  -> 1 | 0
// An empty message is written as "-".
'use strict';

const readline = require('readline');
const curve = require('libsignal/src/curve');

const unhex = (s) => (s === '-' ? Buffer.alloc(0) : Buffer.from(s, 'hex'));
const signalPub = (pub) => Buffer.concat([Buffer.from([5]), unhex(pub)]);

const answer = (line) => {
    const [op, a, b, c] = line.split(' ');
    switch (op) {
        case 'public':
            return curve.getPublicFromPrivateKey(unhex(a)).subarray(1).toString('hex');
        case 'dh':
            return Buffer.from(curve.calculateAgreement(signalPub(b), unhex(a))).toString('hex');
        case 'sign':
            return curve.calculateSignature(unhex(a), unhex(b)).toString('hex');
        case 'verify':
            return curve.verifySignature(signalPub(a), unhex(b), unhex(c)) ? '1' : '0';
        default:
            throw new Error(`unknown request ${op}`);
    }
};

readline.createInterface({ input: process.stdin }).on('line', (line) => {
    try {
        process.stdout.write(`${answer(line)}\n`);
    } catch (err) {
        process.stdout.write(`error ${String(err)}\n`);
    }
});
