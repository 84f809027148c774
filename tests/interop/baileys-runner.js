// The part every logged-in Baileys harness script shares: open the socket
// with the credentials baileys-pair.js saved, report open/close as JSON
// lines on stdout, reconnect after a close (exit after a 401 or "quit"),
// save credential updates, and read one command a line from stdin.
//
// run({ name, url, authDir, socketOptions, onSocket(sock), commands })
//   commands: { name: (args, sock) => Promise|undefined }; "quit" is built in.
'use strict'

const readline = require('readline')
const { default: makeWASocket, useMultiFileAuthState, Browsers } = require('baileys')
const pino = require('pino')

const LOGGED_OUT = 401

// One JSON object a line on stdout.
const emit = (event) => process.stdout.write(JSON.stringify(event) + '\n')

// The text of a plain or extended text message, or null.
const textOf = (message) => {
  if (!message) return null
  return message.conversation ||
    (message.extendedTextMessage && message.extendedTextMessage.text) ||
    null
}

function run ({ name, url, authDir, socketOptions = {}, onSocket = () => {}, commands = {} }) {
  // BAILEYS_LOG=debug (or trace) shows Baileys' own log on stderr.
  const logger = pino({ level: process.env.BAILEYS_LOG || 'silent' }, pino.destination(2))
  const fail = (err) => {
    process.stderr.write(`${name}: ${err && err.stack ? err.stack : err}\n`)
    process.exit(1)
  }
  let sock = null
  let quitting = false
  // Credential writes are chained so that awaiting the last one means all
  // are on disk (exiting during a write of creds.json would leave it
  // truncated).
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
      markOnlineOnConnect: false,
      ...socketOptions
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
    onSocket(current, fail)
  }

  readline.createInterface({ input: process.stdin }).on('line', (line) => {
    const [command, ...args] = line.trim().split(' ')
    if (command === 'quit') {
      quitting = true
      sock.end(undefined)
      exitAfterSaves()
      return
    }
    const handler = commands[command]
    if (handler) {
      Promise.resolve(handler(args, sock)).catch(fail)
    }
  })

  connect().catch(fail)
  return { fail }
}

module.exports = { run, emit, textOf }
