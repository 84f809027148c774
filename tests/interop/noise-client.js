// The client side of WhatsApp's Noise handshake and frame cipher, done by
// Baileys' own makeNoiseHandler, against a server driven by
// tests/noise_interop.rs over stdin/stdout.
//
// Lines are "<tag> <hex>" (the server answers with bare lines). Sequence:
//   server -> root <root public key>
//   client -> ephemeral <priv> <pub>, noise-key <priv> <pub>, routing <info>,
//             hello <intro + framed ClientHello>
//   server -> <framed ServerHello>
//   client -> payload <ClientPayload>, finish <framed ClientFinish>,
//             c2s-plain <plaintext> (several), c2s <all c2s frames, one message>,
//             s2c-node <binary node> (several)
//   server -> <encrypted frames carrying those nodes>, cut into arbitrary pieces,
//             one line per piece, then an empty line
//   client -> s2c-ok <count>
//   server -> chain <CertChain>, server-static <key>
//   client -> chain-ok <1|0>, done
'use strict';

const crypto = require('crypto');
const readline = require('readline');
const {
    makeNoiseHandler,
    proto,
    NOISE_WA_HEADER,
    encodeBinaryNode,
} = require('baileys');
const curve = require('libsignal/src/curve');

const hex = (b) => Buffer.from(b).toString('hex');
const unhex = (s) => Buffer.from(s, 'hex');
const say = (tag, ...values) => process.stdout.write(`${[tag, ...values].join(' ')}\n`);
const fixedKeyPair = (label) => {
    const priv = crypto.createHash('sha256').update(label).digest();
    return { private: priv, public: curve.getPublicFromPrivateKey(priv).subarray(1) };
};
const signalPub = (pub) => Buffer.concat([Buffer.from([5]), pub]);
const silent = { trace() {}, debug() {}, info() {}, warn() {}, error() {} };
silent.child = () => silent;

async function main() {
    const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
    const next = async () => {
        const { value, done } = await lines.next();
        if (done) throw new Error('server closed the pipe');
        return value;
    };
    const expectTag = async (tag) => {
        const [got, value] = (await next()).split(' ');
        if (got !== tag) throw new Error(`expected ${tag}, got ${got}`);
        return unhex(value);
    };

    const root = await expectTag('root');
    const ephemeral = fixedKeyPair('wagate interop ephemeral');
    const noiseKey = fixedKeyPair('wagate interop noise key');
    const routingInfo = Buffer.from('0805080d', 'hex');
    say('ephemeral', hex(ephemeral.private), hex(ephemeral.public));
    say('noise-key', hex(noiseKey.private), hex(noiseKey.public));
    say('routing', hex(routingInfo));

    const noise = makeNoiseHandler({
        keyPair: ephemeral,
        NOISE_HEADER: NOISE_WA_HEADER,
        logger: silent,
        routingInfo,
    });
    const hello = proto.HandshakeMessage.encode({ clientHello: { ephemeral: ephemeral.public } }).finish();
    say('hello', hex(noise.encodeFrame(hello)));

    // Before the handshake finishes decodeFrame hands over raw frames.
    const serverFrames = [];
    await noise.decodeFrame(unhex(await next()), (frame) => serverFrames.push(frame));
    if (serverFrames.length !== 1) throw new Error(`expected one server frame, got ${serverFrames.length}`);
    const handshake = proto.HandshakeMessage.decode(serverFrames[0]);
    const keyEnc = await noise.processHandshake(handshake, noiseKey);

    const payload = proto.ClientPayload.encode({
        username: 4915112345678,
        passive: true,
        pull: true,
        device: 3,
        userAgent: { platform: 14, appVersion: { primary: 2, secondary: 3000, tertiary: 1 } },
    }).finish();
    const finish = proto.HandshakeMessage.encode({
        clientFinish: { static: keyEnc, payload: noise.encrypt(payload) },
    }).finish();
    say('payload', hex(payload));
    say('finish', hex(noise.encodeFrame(finish)));
    // Baileys does not await this either, but sends nothing until the
    // server answers, by which time the keys are in place.
    await noise.finishInit();

    // Client -> server transport frames, all in one websocket message.
    const plaintexts = [
        Buffer.from('first frame'),
        crypto.randomBytes(1 << 20),
        Buffer.from([0]),
    ];
    for (const p of plaintexts) say('c2s-plain', hex(p));
    say('c2s', hex(Buffer.concat(plaintexts.map((p) => noise.encodeFrame(p)))));

    // Server -> client: binary nodes, decrypted and decoded by Baileys.
    const nodes = [
        { tag: 'iq', attrs: { id: '1', type: 'result', to: '@s.whatsapp.net' } },
        { tag: 'message', attrs: { id: 'ABC' }, content: crypto.randomBytes(300) },
        { tag: 'ib', attrs: {}, content: [{ tag: 'dirty', attrs: { type: 'groups' } }] },
        { tag: 'media', attrs: {}, content: crypto.randomBytes(3 << 20) },
    ];
    const encoded = nodes.map((n) => encodeBinaryNode(n));
    for (const e of encoded) say('s2c-node', hex(e));

    const received = [];
    for (;;) {
        const line = await next();
        if (line === '') break;
        await noise.decodeFrame(unhex(line), (node) => received.push(node));
    }
    if (received.length !== nodes.length) {
        throw new Error(`decoded ${received.length} server nodes, expected ${nodes.length}`);
    }
    received.forEach((node, i) => {
        if (!encodeBinaryNode(node).equals(encoded[i])) {
            throw new Error(`server node ${i} (${node.tag}) differs after decryption`);
        }
    });
    say('s2c-ok', received.length);

    // Baileys only checks the intermediate's issuer serial and keeps the
    // decrypted chain to itself, so the server repeats it here in the clear
    // and libsignal checks its signatures.
    const chain = proto.CertChain.decode(await expectTag('chain'));
    const serverStatic = await expectTag('server-static');
    const Details = proto.CertChain.NoiseCertificate.Details;
    const intermediate = Details.decode(chain.intermediate.details);
    const leaf = Details.decode(chain.leaf.details);
    const ok =
        curve.verifySignature(signalPub(root), chain.intermediate.details, chain.intermediate.signature) &&
        curve.verifySignature(signalPub(Buffer.from(intermediate.key)), chain.leaf.details, chain.leaf.signature) &&
        intermediate.issuerSerial === 0 &&
        leaf.issuerSerial === intermediate.serial &&
        Buffer.from(leaf.key).equals(serverStatic);
    say('chain-ok', ok ? 1 : 0);
    say('done', '');
}

main().catch((err) => {
    say('error', Buffer.from(String(err && err.stack || err)).toString('hex'));
    process.exit(1);
});
