// Baileys' own media crypto, driven by tests/media_interop.rs over
// stdin/stdout, one JSON object per line each way; every request gets
// exactly one answer, either {"ok":true,...} or {"error":"..."}. Files go
// through paths (multi-megabyte bodies stay out of the pipe); other bytes
// are base64.
//
// Requests ("op" plus fields; `type` is a Baileys media type: image, video,
// audio, ptt, document, sticker, md-msg-hist, md-app-state, thumbnail-link):
//   keys {type, mediaKey}               -> iv, cipherKey, macKey (getMediaKeys)
//   encrypt {type, input, output}       -> mediaKey, fileSha256, fileEncSha256,
//                                          fileLength (encryptedStream; the body
//                                          is written to `output`)
//   decrypt {type, mediaKey, input, output}
//                                       -> {} (downloadContentFromMessage over
//                                          HTTP from a loopback server serving
//                                          `input`; plaintext written to `output`)
//   retry_request {id, mediaKey, remoteJid, fromMe, me}
//                                       -> the receipt encryptMediaRetryRequest
//                                          builds: attrs, ciphertext, iv, rmr
//   retry_decrypt {id, mediaKey, ciphertext, iv}
//                                       -> stanzaId, directPath, result
//                                          (decryptMediaRetryData)
'use strict';

const fs = require('fs');
const http = require('http');
const readline = require('readline');
const { pipeline } = require('stream/promises');

const {
    decryptMediaRetryData,
    downloadContentFromMessage,
    encryptMediaRetryRequest,
    encryptedStream,
    getMediaKeys,
} = require('baileys');

const b64 = (buf) => Buffer.from(buf).toString('base64');
const bytes = (text) => Buffer.from(text, 'base64');

// Serves one file at any path, as a media host would.
async function serveFile(path) {
    const server = http.createServer((req, res) => {
        const stat = fs.statSync(path);
        res.writeHead(200, { 'content-length': stat.size });
        fs.createReadStream(path).pipe(res);
    });
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
    return server;
}

async function handle(req) {
    switch (req.op) {
        case 'keys': {
            const keys = await getMediaKeys(bytes(req.mediaKey), req.type);
            return { iv: b64(keys.iv), cipherKey: b64(keys.cipherKey), macKey: b64(keys.macKey) };
        }
        case 'encrypt': {
            const enc = await encryptedStream({ url: req.input }, req.type);
            await pipeline(enc.encWriteStream, fs.createWriteStream(req.output));
            return {
                mediaKey: b64(enc.mediaKey),
                fileSha256: b64(enc.fileSha256),
                fileEncSha256: b64(enc.fileEncSha256),
                fileLength: enc.fileLength,
            };
        }
        case 'decrypt': {
            const server = await serveFile(req.input);
            try {
                const url = `http://127.0.0.1:${server.address().port}/v/t62/file.enc`;
                const stream = await downloadContentFromMessage(
                    { mediaKey: bytes(req.mediaKey), directPath: null, url },
                    req.type,
                );
                await pipeline(stream, fs.createWriteStream(req.output));
            } finally {
                server.close();
            }
            return {};
        }
        case 'retry_request': {
            const key = { id: req.id, remoteJid: req.remoteJid, fromMe: req.fromMe };
            const node = await encryptMediaRetryRequest(key, bytes(req.mediaKey), req.me);
            const encrypt = node.content.find((n) => n.tag === 'encrypt');
            const rmr = node.content.find((n) => n.tag === 'rmr');
            const child = (tag) => encrypt.content.find((n) => n.tag === tag).content;
            return {
                attrs: node.attrs,
                ciphertext: b64(child('enc_p')),
                iv: b64(child('enc_iv')),
                rmr: rmr.attrs,
            };
        }
        case 'retry_decrypt': {
            const notification = await decryptMediaRetryData(
                { ciphertext: bytes(req.ciphertext), iv: bytes(req.iv) },
                bytes(req.mediaKey),
                req.id,
            );
            return {
                stanzaId: notification.stanzaId,
                directPath: notification.directPath || '',
                result: notification.result,
            };
        }
        default:
            throw new Error(`unknown op ${req.op}`);
    }
}

const lines = readline.createInterface({ input: process.stdin });
let queue = Promise.resolve();
lines.on('line', (line) => {
    // One request at a time, answered in order.
    queue = queue.then(async () => {
        let answer;
        try {
            answer = { ok: true, ...(await handle(JSON.parse(line))) };
        } catch (err) {
            answer = { error: String((err && err.stack) || err) };
        }
        process.stdout.write(`${JSON.stringify(answer)}\n`);
    });
});
