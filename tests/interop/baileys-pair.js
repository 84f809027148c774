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

function fail (err) {
  process.stderr.write(`baileys-pair: ${err && err.stack ? err.stack : err}\n`)
  process.exit(1)
}

connect().catch(fail)
