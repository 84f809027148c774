// Runs a logged-in Baileys session (credentials from baileys-pair.js) that
// creates, reads and messages groups, for the simulator's group tests.
//
// usage: node baileys-groups.js <ws_url> <auth_dir>
// stdin: one command per line:
//   "create <subject> <jid,jid,…>"  (groupCreate)
//   "meta <group jid>"              (groupMetadata)
//   "send <jid> <text…>"            (sendMessage, to a group or a user)
//   "update <group jid> <add|remove|promote|demote> <jid,jid,…>"  (groupParticipantsUpdate)
//   "all"                           (groupFetchAllParticipating)
//   "leave <group jid>"             (groupLeave)
//   "subject <group jid> <text…>"   (groupUpdateSubject)
//   "desc <group jid> <text…>"      (groupUpdateDescription)
//   "join <code>"                   (groupAcceptInvite)
//   "quit"
// stdout: one JSON object per line:
//   {"event":"open","jid":"..."}  {"event":"close","code":503}
//   {"event":"group","command":"create|meta","id":"...","subject":"...","owner":"...",
//    "participants":[{"id":"...","admin":null|"admin"|"superadmin"}]}
//   {"event":"sent","id":"...","to":"..."}
//   {"event":"message","type":"notify|append","from":"...","participant":"...","id":"...",
//    "fromMe":false,"text":"...","stub":N}
//   {"event":"groups.upsert","id":"...","subject":"..."}
//   {"event":"receipt","id":"...","remoteJid":"...","userJid":"...","delivered":true}
//   {"event":"participants","id":"...","action":"add|remove|…","participants":["..."]}
//   {"event":"update","results":[{"jid":"...","status":"200|409|…"}]}
//   {"event":"all","ids":["..."]}  {"event":"left","id":"..."}
//   {"event":"done","command":"subject|desc"}  {"event":"joined","id":"..."}
//   {"event":"error","command":"...","code":403}  (a refused group query)
// exit status: 0 after "quit" or a 401 close.
'use strict'

const readline = require('readline')
const { default: makeWASocket, useMultiFileAuthState, Browsers } = require('baileys')
const pino = require('pino')

const [url, authDir] = process.argv.slice(2)
if (!url || !authDir) {
  process.stderr.write('usage: node baileys-groups.js <ws_url> <auth_dir>\n')
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

const groupEvent = (command, meta) => ({
  event: 'group',
  command,
  id: meta.id,
  subject: meta.subject,
  owner: meta.owner || null,
  participants: meta.participants.map((p) => ({ id: p.id, admin: p.admin || null }))
})

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
        participant: m.key.participant || null,
        id: m.key.id,
        fromMe: !!m.key.fromMe,
        text: textOf(m.message),
        stub: m.messageStubType || null
      })
    }
  })
  current.ev.on('message-receipt.update', (updates) => {
    for (const { key, receipt } of updates) {
      emit({ event: 'receipt', id: key.id, remoteJid: key.remoteJid, userJid: receipt.userJid, delivered: !!receipt.receiptTimestamp })
    }
  })
  current.ev.on('groups.upsert', (groups) => {
    for (const g of groups) {
      emit({ event: 'groups.upsert', id: g.id, subject: g.subject })
    }
  })
  current.ev.on('group-participants.update', ({ id, participants, action }) => {
    emit({ event: 'participants', id, action, participants })
  })
}

// A group query the server answered with an error: reported, not fatal.
const refused = (command) => (err) => {
  if (err && err.data !== undefined && typeof err.data === 'number') {
    emit({ event: 'error', command, code: err.data })
  } else {
    fail(err)
  }
}

function fail (err) {
  process.stderr.write(`baileys-groups: ${err && err.stack ? err.stack : err}\n`)
  process.exit(1)
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const [command, first, ...rest] = line.trim().split(' ')
  if (command === 'create') {
    const participants = (rest[0] || '').split(',').filter((j) => j)
    sock.groupCreate(first, participants)
      .then((meta) => emit(groupEvent('create', meta)))
      .catch(fail)
  } else if (command === 'meta') {
    sock.groupMetadata(first)
      .then((meta) => emit(groupEvent('meta', meta)))
      .catch(fail)
  } else if (command === 'send') {
    sock.sendMessage(first, { text: rest.join(' ') })
      .then((sent) => emit({ event: 'sent', id: sent.key.id, to: sent.key.remoteJid }))
      .catch(fail)
  } else if (command === 'update') {
    const [action, list] = rest
    sock.groupParticipantsUpdate(first, (list || '').split(',').filter((j) => j), action)
      .then((results) => emit({ event: 'update', results: results.map((r) => ({ jid: r.jid, status: r.status })) }))
      .catch(refused('update'))
  } else if (command === 'all') {
    sock.groupFetchAllParticipating()
      .then((groups) => emit({ event: 'all', ids: Object.keys(groups).sort() }))
      .catch(refused('all'))
  } else if (command === 'leave') {
    sock.groupLeave(first)
      .then(() => emit({ event: 'left', id: first }))
      .catch(refused('leave'))
  } else if (command === 'subject') {
    sock.groupUpdateSubject(first, rest.join(' '))
      .then(() => emit({ event: 'done', command }))
      .catch(refused(command))
  } else if (command === 'desc') {
    sock.groupUpdateDescription(first, rest.join(' '))
      .then(() => emit({ event: 'done', command }))
      .catch(refused(command))
  } else if (command === 'join') {
    sock.groupAcceptInvite(first)
      .then((id) => emit({ event: 'joined', id }))
      .catch(refused(command))
  } else if (command === 'quit') {
    quitting = true
    sock.end(undefined)
    exitAfterSaves()
  }
})

connect().catch(fail)
