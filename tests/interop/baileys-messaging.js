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

const { run, emit, textOf } = require('./baileys-runner')

const [url, authDir] = process.argv.slice(2)
if (!url || !authDir) {
  process.stderr.write('usage: node baileys-messaging.js <ws_url> <auth_dir>\n')
  process.exit(2)
}

run({
  name: 'baileys-messaging',
  url,
  authDir,
  onSocket (sock) {
    sock.ev.on('messages.upsert', ({ messages, type }) => {
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
    sock.ev.on('messages.update', (updates) => {
      for (const { key, update } of updates) {
        if (update.status !== undefined) {
          emit({ event: 'status', id: key.id, remoteJid: key.remoteJid, fromMe: !!key.fromMe, status: update.status })
        }
      }
    })
  },
  commands: {
    send: ([jid, ...words], sock) => sock.sendMessage(jid, { text: words.join(' ') })
      .then((sent) => emit({ event: 'sent', id: sent.key.id, to: sent.key.remoteJid }))
  }
})
