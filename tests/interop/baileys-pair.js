// Pairs an unmodified Baileys client with the chat server at <ws_url> the
// way a Baileys application does: show the QR code, re-create the socket
// when the server asks for a restart (515), stop once the connection opens.
//
// usage: node baileys-pair.js <ws_url> <auth_dir>
// stdout: one JSON object per line:
//   {"event":"qr","qr":"..."}  {"event":"close","code":515}  {"event":"open","jid":"..."}
// exit status: 0 after "open", 1 if the connection closes for good before it.
'use strict'

const { default: makeWASocket, useMultiFileAuthState, Browsers } = require('baileys')
const pino = require('pino')
const fs = require('fs')
const path = require('path')

const [url, authDir] = process.argv.slice(2)
if (!url || !authDir) {
  process.stderr.write('usage: node baileys-pair.js <ws_url> <auth_dir>\n')
  process.exit(2)
}

// BAILEYS_LOG=debug (or trace) shows Baileys' own log on stderr.
const logger = pino({ level: process.env.BAILEYS_LOG || 'silent' }, pino.destination(2))
const emit = (event) => process.stdout.write(JSON.stringify(event) + '\n')
const RESTART_REQUIRED = 515
let opened = false

async function connect () {
  const { state, saveCreds } = await useMultiFileAuthState(authDir)
  const sock = makeWASocket({
    waWebSocketUrl: url,
    auth: state,
    logger,
    browser: Browsers.ubuntu('Chrome'),
    printQRInTerminal: false,
    markOnlineOnConnect: false
  })
  // Writes are chained so that awaiting the last one means all are on disk
  // (concurrent writes of creds.json could leave it truncated at exit).
  let saved = Promise.resolve()
  const save = () => { saved = saved.then(saveCreds); return saved }
  sock.ev.on('creds.update', save)
  sock.ev.on('connection.update', async (update) => {
    if (update.qr) {
      emit({ event: 'qr', qr: update.qr })
    }
    if (update.connection === 'open') {
      opened = true
      emit({ event: 'open', jid: sock.user.id })
      // An application keeps running after this; a script that stops here
      // must first let Baileys finish what login started: it uploads its
      // one-time prekeys and only then writes their private halves (its
      // key transaction commits after the upload). Exiting before that
      // leaves the server handing out prekeys this device cannot open.
      await prekeysOnDisk(state.creds).catch(fail)
      await save()
      sock.end(undefined)
      process.exit(0)
    }
    if (update.connection === 'close' && !opened) {
      const error = update.lastDisconnect && update.lastDisconnect.error
      const code = error && error.output ? error.output.statusCode : null
      emit({ event: 'close', code })
      if (code === RESTART_REQUIRED) {
        connect().catch(fail)
      } else {
        process.exit(1)
      }
    }
  })
}

// Resolves once the prekeys Baileys uploaded at login (ids below
// creds.nextPreKeyId) are all written to the auth dir; rejects after
// PREKEY_WAIT_MS.
const PREKEY_WAIT_MS = 15000
function prekeysOnDisk (creds) {
  const deadline = Date.now() + PREKEY_WAIT_MS
  const written = () => {
    if (creds.firstUnuploadedPreKeyId <= 1) return false
    for (let id = 1; id < creds.nextPreKeyId; id++) {
      if (!fs.existsSync(path.join(authDir, `pre-key-${id}.json`))) return false
    }
    return true
  }
  return new Promise((resolve, reject) => {
    const look = () => {
      if (written()) return resolve()
      if (Date.now() > deadline) {
        return reject(new Error(`prekeys not uploaded and written within ${PREKEY_WAIT_MS} ms`))
      }
      setTimeout(look, 20)
    }
    look()
  })
}

function fail (err) {
  process.stderr.write(`baileys-pair: ${err && err.stack ? err.stack : err}\n`)
  process.exit(1)
}

connect().catch(fail)
