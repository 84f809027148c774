// Runs a logged-in Baileys session against the chat server at <ws_url> with
// the credentials in <auth_dir> (made by baileys-pair.js), the way a Baileys
// application does: it reconnects after every close except a logout (401).
//
// usage: node baileys-session.js <ws_url> <auth_dir>
// stdin: one command per line: "logout" (unlink this device), "quit".
// stdout: one JSON object per line:
//   {"event":"open","jid":"..."}  {"event":"close","code":503}
// exit status: 0 after a 401 close or "quit".
'use strict'

const readline = require('readline')
const { default: makeWASocket, useMultiFileAuthState, Browsers } = require('baileys')
const pino = require('pino')

const [url, authDir] = process.argv.slice(2)
if (!url || !authDir) {
  process.stderr.write('usage: node baileys-session.js <ws_url> <auth_dir>\n')
  process.exit(2)
}

// BAILEYS_LOG=debug (or trace) shows Baileys' own log on stderr.
const logger = pino({ level: process.env.BAILEYS_LOG || 'silent' }, pino.destination(2))
const emit = (event) => process.stdout.write(JSON.stringify(event) + '\n')
const LOGGED_OUT = 401
let sock = null
let quitting = false
// Credential writes are chained so that awaiting the last one means all are
// on disk (exiting during a write of creds.json would leave it truncated).
let saved = Promise.resolve()
const exitAfterSaves = () => saved.then(() => process.exit(0), fail)

async function connect () {
  const { state, saveCreds } = await useMultiFileAuthState(authDir)
  if (!state.creds.me) {
    throw new Error(`no paired credentials in ${authDir}`)
  }
  const current = makeWASocket({
    waWebSocketUrl: url,
    auth: state,
    logger,
    browser: Browsers.ubuntu('Chrome'),
    printQRInTerminal: false,
    markOnlineOnConnect: false
  })
  sock = current
  current.ev.on('creds.update', () => { saved = saved.then(saveCreds) })
  current.ev.on('connection.update', (update) => {
    if (update.qr) {
      emit({ event: 'qr', qr: update.qr })
    }
    if (update.connection === 'open') {
      emit({ event: 'open', jid: current.user.id })
    }
    if (update.connection === 'close') {
      const error = update.lastDisconnect && update.lastDisconnect.error
      const code = error && error.output ? error.output.statusCode : null
      emit({ event: 'close', code })
      if (code === LOGGED_OUT || quitting) {
        exitAfterSaves()
        return
      }
      connect().catch(fail)
    }
  })
}

function fail (err) {
  process.stderr.write(`baileys-session: ${err && err.stack ? err.stack : err}\n`)
  process.exit(1)
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const command = line.trim()
  if (command === 'logout') {
    sock.logout().catch(fail)
  } else if (command === 'quit') {
    quitting = true
    sock.end(undefined)
    exitAfterSaves()
  }
})

connect().catch(fail)
