// Runs a logged-in Baileys session (credentials from baileys-pair.js) that
// sends media and downloads the media others send it, for the simulator's
// media host tests.
//
// usage: node baileys-media.js <ws_url> <auth_dir> <media_url>
// stdin: one command per line:
//   "send <jid> <kind> <file> <mimetype> [caption or file name…]" with kind
//   image | video | audio | ptt | document | sticker, and the mimetype
//   percent-encoded (a space in "audio/ogg; codecs=opus" would split it);
//   "quit".
// stdout: one JSON object per line:
//   {"event":"open","jid":"..."}  {"event":"close","code":503}
//   {"event":"sent","id":"...","to":"..."}
//   {"event":"status","id":"...","remoteJid":"...","fromMe":true,"status":3}
//   {"event":"media","id":"...","from":"...","kind":"imageMessage",
//    "mimetype":"...","caption":"...","fileName":"...","ptt":false,
//    "length":N,"sha256":"hex of what downloadMediaMessage returned",
//    "error":"..." (when the download failed)}
// exit status: 0 after "quit" or a 401 close.
//
// The simulator's media host speaks plain HTTP on loopback, while Baileys
// uploads to https://{host}: the socket's axios options get an adapter that
// sends requests for the media host over plain HTTP, URL otherwise intact.
// Nothing in Baileys is changed.
'use strict'

const crypto = require('crypto')
const fs = require('fs')
const { downloadMediaMessage } = require('baileys')
const axios = require('axios')
const { run, emit } = require('./baileys-runner')

const [url, authDir, mediaUrl] = process.argv.slice(2)
if (!url || !authDir || !mediaUrl) {
  process.stderr.write('usage: node baileys-media.js <ws_url> <auth_dir> <media_url>\n')
  process.exit(2)
}
const mediaHost = new URL(mediaUrl).host
const httpAdapter = axios.getAdapter('http')
const adapter = (config) => {
  const target = new URL(config.url)
  if (target.host === mediaHost && target.protocol === 'https:') {
    target.protocol = 'http:'
    config = { ...config, url: target.toString() }
  }
  return httpAdapter(config)
}

const MEDIA_KINDS = ['imageMessage', 'videoMessage', 'audioMessage', 'documentMessage', 'stickerMessage']

async function reportMedia (m) {
  const kind = MEDIA_KINDS.find((k) => m.message && m.message[k])
  if (!kind) return
  const content = m.message[kind]
  const event = {
    event: 'media',
    id: m.key.id,
    from: m.key.remoteJid,
    kind,
    mimetype: content.mimetype || '',
    caption: content.caption || '',
    fileName: content.fileName || '',
    ptt: !!content.ptt
  }
  try {
    const buffer = await downloadMediaMessage(m, 'buffer', { options: { adapter } })
    event.length = buffer.length
    event.sha256 = crypto.createHash('sha256').update(buffer).digest('hex')
  } catch (err) {
    event.error = String(err && err.message ? err.message : err)
  }
  emit(event)
}

function content (kind, file, mimetype, text) {
  const data = fs.readFileSync(file)
  switch (kind) {
    case 'image': return { image: data, mimetype, caption: text, jpegThumbnail: '' }
    case 'video': return { video: data, mimetype, caption: text, jpegThumbnail: '' }
    case 'audio': return { audio: data, mimetype, seconds: 1 }
    case 'ptt': return { audio: data, mimetype, ptt: true, seconds: 1, waveform: new Uint8Array(64) }
    case 'document': return { document: data, mimetype, fileName: text }
    case 'sticker': return { sticker: data, mimetype }
    default: throw new Error(`unknown media kind ${kind}`)
  }
}

run({
  name: 'baileys-media',
  url,
  authDir,
  socketOptions: { options: { adapter } },
  onSocket (sock, fail) {
    sock.ev.on('messages.upsert', ({ messages }) => {
      for (const m of messages) {
        if (!m.key.fromMe) reportMedia(m).catch(fail)
      }
    })
    sock.ev.on('messages.update', (updates) => {
      for (const { key, update } of updates) {
        if (update.status !== undefined) {
          emit({ event: 'status', id: key.id, remoteJid: key.remoteJid, fromMe: !!key.fromMe, status: update.status })
        }
      }
    })
  },
  commands: {
    send: ([jid, kind, file, mimetype, ...words], sock) =>
      sock.sendMessage(jid, content(kind, file, decodeURIComponent(mimetype), words.join(' ')))
        .then((sent) => emit({ event: 'sent', id: sent.key.id, to: sent.key.remoteJid }))
  }
})
