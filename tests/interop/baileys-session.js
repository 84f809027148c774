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

const { run, emit } = require('./baileys-runner')

const [url, authDir] = process.argv.slice(2)
if (!url || !authDir) {
  process.stderr.write('usage: node baileys-session.js <ws_url> <auth_dir>\n')
  process.exit(2)
}

run({
  name: 'baileys-session',
  url,
  authDir,
  onSocket (sock) {
    sock.ev.on('connection.update', (update) => {
      if (update.qr) {
        emit({ event: 'qr', qr: update.qr })
      }
    })
  },
  commands: {
    logout: (_, sock) => sock.logout()
  }
})
