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

const { run, emit, textOf } = require('./baileys-runner')

const [url, authDir] = process.argv.slice(2)
if (!url || !authDir) {
  process.stderr.write('usage: node baileys-groups.js <ws_url> <auth_dir>\n')
  process.exit(2)
}

const groupEvent = (command, meta) => ({
  event: 'group',
  command,
  id: meta.id,
  subject: meta.subject,
  owner: meta.owner || null,
  participants: meta.participants.map((p) => ({ id: p.id, admin: p.admin || null }))
})

// A group query the server answered with an error: reported, not fatal
// (anything else fails the script).
const refused = (command) => (err) => {
  if (err && err.data !== undefined && typeof err.data === 'number') {
    emit({ event: 'error', command, code: err.data })
  } else {
    throw err
  }
}

const list = (text) => (text || '').split(',').filter((j) => j)

run({
  name: 'baileys-groups',
  url,
  authDir,
  onSocket (sock) {
    sock.ev.on('messages.upsert', ({ messages, type }) => {
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
    sock.ev.on('message-receipt.update', (updates) => {
      for (const { key, receipt } of updates) {
        emit({ event: 'receipt', id: key.id, remoteJid: key.remoteJid, userJid: receipt.userJid, delivered: !!receipt.receiptTimestamp })
      }
    })
    sock.ev.on('groups.upsert', (groups) => {
      for (const g of groups) {
        emit({ event: 'groups.upsert', id: g.id, subject: g.subject })
      }
    })
    sock.ev.on('group-participants.update', ({ id, participants, action }) => {
      emit({ event: 'participants', id, action, participants })
    })
  },
  commands: {
    create: ([subject, members], sock) => sock.groupCreate(subject, list(members))
      .then((meta) => emit(groupEvent('create', meta))),
    meta: ([group], sock) => sock.groupMetadata(group)
      .then((meta) => emit(groupEvent('meta', meta))),
    send: ([jid, ...words], sock) => sock.sendMessage(jid, { text: words.join(' ') })
      .then((sent) => emit({ event: 'sent', id: sent.key.id, to: sent.key.remoteJid })),
    update: ([group, action, members], sock) => sock.groupParticipantsUpdate(group, list(members), action)
      .then((results) => emit({ event: 'update', results: results.map((r) => ({ jid: r.jid, status: r.status })) }))
      .catch(refused('update')),
    all: (_, sock) => sock.groupFetchAllParticipating()
      .then((groups) => emit({ event: 'all', ids: Object.keys(groups).sort() }))
      .catch(refused('all')),
    leave: ([group], sock) => sock.groupLeave(group)
      .then(() => emit({ event: 'left', id: group }))
      .catch(refused('leave')),
    subject: ([group, ...words], sock) => sock.groupUpdateSubject(group, words.join(' '))
      .then(() => emit({ event: 'done', command: 'subject' }))
      .catch(refused('subject')),
    desc: ([group, ...words], sock) => sock.groupUpdateDescription(group, words.join(' '))
      .then(() => emit({ event: 'done', command: 'desc' }))
      .catch(refused('desc')),
    join: ([code], sock) => sock.groupAcceptInvite(code)
      .then((id) => emit({ event: 'joined', id }))
      .catch(refused('join'))
  }
})
