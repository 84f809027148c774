// Runs a logged-in Baileys session (credentials from baileys-pair.js) that
// sends and receives 1:1 texts, for the simulator's messaging tests.
//
// usage: node baileys-messaging.js <ws_url> <auth_dir>
// stdin: one command per line: "send <jid> <text…>", "quit".
// stdout: one JSON object per line:
//   {"event":"open","jid":"..."}  {"event":"close","code":503}
//   {"event":"sent","id":"...","to":"..."}
//   {"event":"message","type":"notify|append","from":"...","id":"...","fromMe":false,"text":"..."}
//   {"event":"status","id":"...","remoteJid":"...","fromMe":true,"status":3}
// exit status: 0 after "quit" or a 401 close.
'use strict'

const readline = require('readline')
const { default: makeWASocket, useMultiFileAuthState, Browsers } = require('baileys')
const pino = require('pino')

const [url, authDir] = process.argv.slice(2)
if (!url || !authDir) {
  process.stderr.write('usage: node baileys-messaging.js <ws_url> <auth_dir>\n')
  process.exit(2)
}

// BAILEYS_LOG=debug (or trace) shows Baileys' own log on stderr.
const logger = pino({ level: process.env.BAILEYS_LOG || 'silent' }, pino.destination(2))
const emit = (event) => process.stdout.write(JSON.stringify(event) + '\n')
const LOGGED_OUT = 401
let sock = null
let quitting = false
let saved = Promise.resolve()
const exitAfterSaves = () => saved.then(() => process.exit(0), fail)

const textOf = (message) => {
  if (!message) return null
  return message.conversation ||
    (message.extendedTextMessage && message.extendedTextMessage.text) ||
    null
}

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
  current.ev.on('messages.upsert', ({ messages, type }) => {
    for (const m of messages) {
      emit({
        event: 'message',
        type,
        from: m.key.remoteJid,
        id: m.key.id,
        fromMe: !!m.key.fromMe,
        text: textOf(m.message)
      })
    }
  })
  current.ev.on('messages.update', (updates) => {
    for (const { key, update } of updates) {
      if (update.status !== undefined) {
        emit({ event: 'status', id: key.id, remoteJid: key.remoteJid, fromMe: !!key.fromMe, status: update.status })
      }
    }
  })
}

function fail (err) {
  process.stderr.write(`baileys-messaging: ${err && err.stack ? err.stack : err}\n`)
  process.exit(1)
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const [command, jid, ...words] = line.trim().split(' ')
  if (command === 'send') {
    sock.sendMessage(jid, { text: words.join(' ') })
      .then((sent) => emit({ event: 'sent', id: sent.key.id, to: sent.key.remoteJid }))
      .catch(fail)
  } else if (command === 'quit') {
    quitting = true
    sock.end(undefined)
    exitAfterSaves()
  }
})

connect().catch(fail)
