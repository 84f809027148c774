// Runs a logged-in Baileys session (credentials from baileys-pair.js) and
// reports what it reads from the account's app state, for the simulator's
// app-state tests: Baileys syncs a collection when the server says it
// changed (server_sync), from a snapshot on the media host when it has
// none of it yet, with patches after that, checking every MAC.
//
// usage: node baileys-appstate.js <ws_url> <auth_dir> <media_url>
// stdin: "quit".
// stdout: one JSON object per line:
//   {"event":"open","jid":"..."}  {"event":"close","code":503}
//   {"event":"contact","id":"...","name":"..."}
//   {"event":"chat","id":"...","archived":true,"pinned":1700000000,"muteEndTime":-1}
//     (only the fields the update carries)
// exit status: 0 after "quit" or a 401 close.
//
// The simulator's media host speaks plain HTTP on loopback, and a snapshot's
// blob reference carries only a direct path, which Baileys fetches from
// https://mmg.whatsapp.net (WhatsApp's download host): the socket's axios
// options get an adapter that sends requests for either host to the media
// host over plain HTTP, path intact. Nothing in Baileys is changed.
'use strict'

const axios = require('axios')
const { run, emit } = require('./baileys-runner')

const [url, authDir, mediaUrl] = process.argv.slice(2)
if (!url || !authDir || !mediaUrl) {
  process.stderr.write('usage: node baileys-appstate.js <ws_url> <auth_dir> <media_url>\n')
  process.exit(2)
}
const mediaHost = new URL(mediaUrl).host
const DOWNLOAD_HOST = 'mmg.whatsapp.net'
const httpAdapter = axios.getAdapter('http')
const adapter = (config) => {
  const target = new URL(config.url)
  if ((target.host === mediaHost || target.host === DOWNLOAD_HOST) && target.protocol === 'https:') {
    target.protocol = 'http:'
    target.host = mediaHost
    config = { ...config, url: target.toString() }
  }
  return httpAdapter(config)
}

run({
  name: 'baileys-appstate',
  url,
  authDir,
  // Baileys skips the snapshot and patch MAC checks by default: on here.
  socketOptions: {
    options: { adapter },
    appStateMacVerification: { patch: true, snapshot: true }
  },
  onSocket (sock) {
    const contacts = (list) => {
      for (const c of list) {
        if (c.name !== undefined) emit({ event: 'contact', id: c.id, name: c.name })
      }
    }
    sock.ev.on('contacts.upsert', contacts)
    sock.ev.on('contacts.update', contacts)
    const chats = (list) => {
      for (const c of list) {
        const event = { event: 'chat', id: c.id }
        for (const field of ['archived', 'pinned', 'muteEndTime']) {
          if (c[field] !== undefined) event[field] = c[field]
        }
        emit(event)
      }
    }
    sock.ev.on('chats.update', chats)
    sock.ev.on('chats.upsert', chats)
  }
})
