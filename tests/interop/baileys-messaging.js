// Runs a logged-in Baileys session (credentials from baileys-pair.js) that
// sends and receives 1:1 texts, for the simulator's messaging tests.
//
// usage: node baileys-messaging.js <ws_url> <auth_dir>
// stdin: one command per line: "send <jid> <text…>", "quit", and actions on
//   a message of the chat (<fromMe> is 1 when Baileys sent it):
//   "react <jid> <id> <fromMe> <emoji>", "unreact <jid> <id> <fromMe>",
//   "reply <jid> <id> <fromMe> <quoted text>|<text…>" (mentions the chat's
//   user), "edit <jid> <id> <text…>", "revoke <jid> <id>".
// stdout: one JSON object per line:
//   {"event":"open","jid":"..."}  {"event":"close","code":503}
//   {"event":"sent","id":"...","to":"..."}
//   {"event":"message","type":"notify|append","from":"...","id":"...","fromMe":false,"text":"...",
//    "kind":"conversation|extendedTextMessage|reactionMessage|protocolMessage|…",
//    "reaction":{"id":"...","fromMe":false,"text":"👍"},
//    "protocol":{"type":14,"id":"...","fromMe":true,"text":"new text"},
//    "context":{"stanzaId":"...","participant":"...","quoted":"...","mentions":["..."]}}
//   {"event":"status","id":"...","remoteJid":"...","fromMe":true,"status":3}
// exit status: 0 after "quit" or a 401 close.
'use strict'

const { run, emit, textOf } = require('./baileys-runner')
const { normalizeMessageContent, getContentType } = require('baileys')

// What a message says about other messages, as Baileys reads it.
const refsOf = (message) => {
  const content = normalizeMessageContent(message) || {}
  const out = { kind: getContentType(content) || null }
  if (content.reactionMessage) {
    const { key, text } = content.reactionMessage
    out.reaction = { id: key && key.id, fromMe: !!(key && key.fromMe), text: text || '' }
  }
  if (content.protocolMessage) {
    const { key, type, editedMessage } = content.protocolMessage
    out.protocol = { type: type || 0, id: key && key.id, fromMe: !!(key && key.fromMe), text: textOf(editedMessage) }
  }
  const context = content.extendedTextMessage && content.extendedTextMessage.contextInfo
  if (context) {
    out.context = {
      stanzaId: context.stanzaId || null,
      participant: context.participant || null,
      quoted: textOf(context.quotedMessage),
      mentions: context.mentionedJid || []
    }
  }
  return out
}

const keyOf = (jid, id, fromMe) => ({ remoteJid: jid, id, fromMe: fromMe === '1' })

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
          text: textOf(normalizeMessageContent(m.message)),
          ...refsOf(m.message)
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
      .then((sent) => emit({ event: 'sent', id: sent.key.id, to: sent.key.remoteJid })),
    react: ([jid, id, fromMe, emoji], sock) => sock.sendMessage(jid, { react: { text: emoji, key: keyOf(jid, id, fromMe) } })
      .then((sent) => emit({ event: 'sent', id: sent.key.id, to: sent.key.remoteJid })),
    unreact: ([jid, id, fromMe], sock) => sock.sendMessage(jid, { react: { text: '', key: keyOf(jid, id, fromMe) } })
      .then((sent) => emit({ event: 'sent', id: sent.key.id, to: sent.key.remoteJid })),
    reply: ([jid, id, fromMe, ...words], sock) => {
      const [quoted, text] = words.join(' ').split('|')
      const quotedMessage = { key: keyOf(jid, id, fromMe), message: { conversation: quoted } }
      const user = jid.split('@')[0]
      return sock.sendMessage(jid, { text: `${text} @${user}`, mentions: [jid] }, { quoted: quotedMessage })
        .then((sent) => emit({ event: 'sent', id: sent.key.id, to: sent.key.remoteJid }))
    },
    edit: ([jid, id, ...words], sock) => sock.sendMessage(jid, { text: words.join(' '), edit: keyOf(jid, id, '1') })
      .then((sent) => emit({ event: 'sent', id: sent.key.id, to: sent.key.remoteJid })),
    revoke: ([jid, id], sock) => sock.sendMessage(jid, { delete: keyOf(jid, id, '1') })
      .then((sent) => emit({ event: 'sent', id: sent.key.id, to: sent.key.remoteJid }))
  }
})
