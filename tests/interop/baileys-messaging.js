// Runs a logged-in Baileys session (credentials from baileys-pair.js) that
// sends and receives 1:1 texts, for the simulator's messaging tests.
//
// usage: node baileys-messaging.js <ws_url> <auth_dir>
// stdin: one command per line: "send <jid> <text…>", "quit", and actions on
//   a message of the chat (<fromMe> is 1 when Baileys sent it):
//   "react <jid> <id> <fromMe> <emoji>", "unreact <jid> <id> <fromMe>",
//   "reply <jid> <id> <fromMe> <quoted text>|<text…>" (mentions the chat's
//   user), "edit <jid> <id> <text…>", "revoke <jid> <id>"; and content:
//   "location <jid> <lat> <long> <name…>", "contacts <jid> <name>[|<name>…]"
//   (one vCard each), "poll <jid> <selectable> <name>|<option>|<option>…",
//   "vote <jid> <pollId> <pollFromMe> <option>[|<option>…]" (sealed with the
//   poll's secret under the key WhatsApp derives, with Baileys' hkdf and
//   aesEncryptGCM).
// stdout: one JSON object per line:
//   {"event":"open","jid":"..."}  {"event":"close","code":503}
//   {"event":"sent","id":"...","to":"..."}
//   {"event":"message","type":"notify|append","from":"...","id":"...","fromMe":false,"text":"...",
//    "kind":"conversation|extendedTextMessage|reactionMessage|protocolMessage|…",
//    "reaction":{"id":"...","fromMe":false,"text":"👍"},
//    "protocol":{"type":14,"id":"...","fromMe":true,"text":"new text"},
//    "context":{"stanzaId":"...","participant":"...","quoted":"...","mentions":["..."]},
//    "location":{"lat":1.5,"long":2.5,"name":"...","address":"...","url":"..."},
//    "contacts":{"displayName":"...","cards":[{"displayName":"...","vcard":"..."}]},
//    "poll":{"name":"...","options":["..."],"selectable":0,"secret":true}}
//   {"event":"vote","pollId":"...","voter":"...","options":["<sha256 hex>"]}
//     (a vote Baileys decrypted itself, from messages.update)
//   {"event":"status","id":"...","remoteJid":"...","fromMe":true,"status":3}
// exit status: 0 after "quit" or a 401 close.
'use strict'

const { run, emit, textOf } = require('./baileys-runner')
const { normalizeMessageContent, getContentType, jidNormalizedUser, generateMessageIDV2 } = require('baileys')
const { hkdf, aesEncryptGCM, sha256 } = require('baileys/lib/Utils/crypto')
const { proto } = require('baileys/WAProto')

// Every message seen or sent, by id: Baileys asks for a poll's message
// (getMessage) to decrypt the votes on it.
const store = new Map()

const cardOf = (name) => ({ displayName: name, vcard: `BEGIN:VCARD\nVERSION:3.0\nFN:${name}\nEND:VCARD` })

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
  const location = content.locationMessage || content.liveLocationMessage
  if (location) {
    out.location = {
      lat: location.degreesLatitude,
      long: location.degreesLongitude,
      name: location.name || '',
      address: location.address || '',
      url: location.url || ''
    }
  }
  if (content.contactMessage) {
    const { displayName, vcard } = content.contactMessage
    out.contacts = { displayName: '', cards: [{ displayName, vcard }] }
  }
  if (content.contactsArrayMessage) {
    const { displayName, contacts } = content.contactsArrayMessage
    out.contacts = { displayName, cards: (contacts || []).map(({ displayName, vcard }) => ({ displayName, vcard })) }
  }
  const poll = content.pollCreationMessage || content.pollCreationMessageV2 || content.pollCreationMessageV3
  if (poll) {
    const secret = message.messageContextInfo && message.messageContextInfo.messageSecret
    out.poll = {
      name: poll.name,
      options: (poll.options || []).map((o) => o.optionName),
      selectable: poll.selectableOptionsCount || 0,
      secret: !!(secret && secret.length === 32)
    }
  }
  return out
}

// Seals a vote as WhatsApp does: HKDF-SHA256 of the poll's secret for
// poll id, creator, voter and "Poll Vote"; AES-GCM with id\0voter as
// additional data.
const sealVote = async (secret, pollId, creator, voter, options) => {
  const plain = proto.Message.PollVoteMessage.encode({
    selectedOptions: options.map((o) => sha256(Buffer.from(o)))
  }).finish()
  const key = await hkdf(secret, 32, { info: `${pollId}${creator}${voter}Poll Vote` })
  const iv = require('crypto').randomBytes(12)
  return { encPayload: aesEncryptGCM(plain, key, iv, Buffer.from(`${pollId}\u0000${voter}`)), encIv: iv }
}

const keyOf = (jid, id, fromMe) => ({ remoteJid: jid, id, fromMe: fromMe === '1' })

const [url, authDir] = process.argv.slice(2)
if (!url || !authDir) {
  process.stderr.write('usage: node baileys-messaging.js <ws_url> <auth_dir>\n')
  process.exit(2)
}

const sentEvent = (sent) => {
  store.set(sent.key.id, sent.message)
  emit({ event: 'sent', id: sent.key.id, to: sent.key.remoteJid })
}

run({
  name: 'baileys-messaging',
  url,
  authDir,
  socketOptions: { getMessage: async (key) => store.get(key.id) },
  onSocket (sock) {
    sock.ev.on('messages.upsert', ({ messages, type }) => {
      for (const m of messages) {
        if (m.message) store.set(m.key.id, m.message)
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
        for (const vote of update.pollUpdates || []) {
          emit({
            event: 'vote',
            pollId: key.id,
            voter: vote.pollUpdateMessageKey && vote.pollUpdateMessageKey.remoteJid,
            options: ((vote.vote && vote.vote.selectedOptions) || []).map((o) => Buffer.from(o).toString('hex'))
          })
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
      .then((sent) => emit({ event: 'sent', id: sent.key.id, to: sent.key.remoteJid })),
    location: ([jid, lat, long, ...name], sock) => sock.sendMessage(jid, {
      location: { degreesLatitude: Number(lat), degreesLongitude: Number(long), name: name.join(' ') }
    }).then(sentEvent),
    contacts: ([jid, ...names], sock) => {
      const cards = names.join(' ').split('|').map(cardOf)
      return sock.sendMessage(jid, { contacts: { displayName: cards.length > 1 ? `${cards.length} contacts` : cards[0].displayName, contacts: cards.map(({ vcard }) => ({ vcard })) } })
        .then(sentEvent)
    },
    poll: ([jid, selectable, ...words], sock) => {
      const [name, ...values] = words.join(' ').split('|')
      return sock.sendMessage(jid, { poll: { name, values, selectableCount: Number(selectable) } })
        .then(sentEvent)
    },
    vote: async ([jid, pollId, pollFromMe, ...words], sock) => {
      const poll = store.get(pollId)
      const secret = poll && poll.messageContextInfo && poll.messageContextInfo.messageSecret
      if (!secret) throw new Error(`no secret of poll ${pollId}`)
      const me = jidNormalizedUser(sock.user.id)
      const creator = pollFromMe === '1' ? me : jidNormalizedUser(jid)
      const vote = await sealVote(secret, pollId, creator, me, words.join(' ').split('|'))
      const messageId = generateMessageIDV2(sock.user.id)
      await sock.relayMessage(jid, {
        pollUpdateMessage: {
          pollCreationMessageKey: { remoteJid: jid, id: pollId, fromMe: pollFromMe === '1' },
          vote,
          senderTimestampMs: Date.now()
        }
      }, { messageId })
      emit({ event: 'sent', id: messageId, to: jid })
    }
  }
})
