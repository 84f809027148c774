#!/usr/bin/env node
// Example wagate client: starts a session and follows its events from a saved cursor.
//
// The service definition is loaded at start-up from the repository's proto/
// directory with @grpc/proto-loader, so nothing generated is kept here.
//
// Every event is printed on one line that starts with its cursor, e.g.
//
//   cursor=4 seq=1 session=demo qr=2@...
//   cursor=9 seq=3 session=demo state=CONNECTED jid=15551234567:3@s.whatsapp.net
//
// and the cursor is saved to --cursor-file once the event has been handled, so
// a restarted client resumes exactly after the last event it processed.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', '..', 'proto');
const GATEWAY_PROTO = 'wagate/v1/gateway.proto';

const USAGE = `usage: wagate-example.js [options]
  --addr HOST:PORT     gateway address, plaintext (default 127.0.0.1:50051)
  --api-key KEY        sent as x-api-key (default $WAGATE_API_KEY)
  --session ID         session id to Init and follow (default demo)
  --cursor-file PATH   where the last cursor is kept (default wagate-demo.cursor)
  --until STATE        exit 0 when this state is seen, '' = never (default CONNECTED)
  --max-events N       exit 0 after N events, 0 = no limit (default 0)`;

function options() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        addr: { type: 'string', default: '127.0.0.1:50051' },
        'api-key': { type: 'string', default: process.env.WAGATE_API_KEY || '' },
        session: { type: 'string', default: 'demo' },
        'cursor-file': { type: 'string', default: 'wagate-demo.cursor' },
        until: { type: 'string', default: 'CONNECTED' },
        'max-events': { type: 'string', default: '0' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    }));
  } catch (e) {
    console.error(`${e.message}\n${USAGE}`);
    process.exit(2);
  }
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  if (!/^\d+$/.test(values['max-events'])) {
    console.error(`--max-events: not a number: ${values['max-events']}`);
    process.exit(2);
  }
  return { ...values, maxEvents: Number(values['max-events']) };
}

function loadGateway() {
  // proto-loader (protobufjs) has google/protobuf/timestamp.proto built in;
  // includeDirs resolves the import paths of our own files.
  const definition = protoLoader.loadSync(GATEWAY_PROTO, {
    includeDirs: [PROTO_ROOT],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).wagate.v1;
}

// The saved cursor as a decimal string (uint64 does not fit a JS number), or null.
function readCursor(file) {
  let text;
  try {
    text = fs.readFileSync(file, 'ascii').trim();
  } catch (e) {
    if (e.code === 'ENOENT') return null;
    throw e;
  }
  if (!/^\d+$/.test(text)) throw new Error(`${file}: not a cursor: ${JSON.stringify(text)}`);
  return text;
}

// Writes the cursor atomically: a crash leaves the old or the new value, never half.
function saveCursor(file, cursor) {
  const dir = path.dirname(path.resolve(file));
  const tmp = path.join(dir, `.cursor-${process.pid}-${Date.now()}`);
  try {
    const fd = fs.openSync(tmp, 'w');
    try {
      fs.writeSync(fd, `${cursor}\n`);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
}

// Draws the QR in the terminal when the optional `qrcode-terminal` package is installed.
function printQr(qr) {
  let qrcode;
  try {
    qrcode = require('qrcode-terminal');
  } catch {
    return;
  }
  qrcode.generate(qr, { small: true });
}

function describe(event) {
  const head = `cursor=${event.cursor} seq=${event.seq} session=${event.session_id}`;
  if (event.payload === 'qr') return { line: `${head} qr=${event.qr.qr}`, state: null };
  if (event.payload === 'connection') {
    const c = event.connection;
    let line = `${head} state=${c.state}`;
    if (c.jid) line += ` jid=${c.jid}`;
    if (c.reason) line += ` reason=${JSON.stringify(c.reason)}`;
    return { line, state: c.state };
  }
  // Event kinds this client does not know yet are still printed and acknowledged.
  return { line: `${head} event=${event.payload || 'unknown'}`, state: null };
}

function unary(client, method, request, metadata) {
  const deadline = new Date(Date.now() + 30_000);
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline }, (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}

// Follows the stream once. Resolves 'done' when the exit condition is met,
// 'retry' when the stream should be reopened; rejects on a fatal error.
function follow(client, opts, metadata, counter) {
  return new Promise((resolve, reject) => {
    const cursor = readCursor(opts['cursor-file']);
    const request = { session_ids: [opts.session] };
    if (cursor === null) request.from_beginning = true;
    else request.after_cursor = cursor;

    const call = client.Events(request, metadata);
    let finished = false;
    const finish = (fn, value) => {
      if (finished) return;
      finished = true;
      fn(value);
    };
    call.on('data', (event) => {
      if (finished) return;
      try {
        const { line, state } = describe(event);
        console.log(line);
        if (event.payload === 'qr') printQr(event.qr.qr);
        // Only after the event is fully handled does the cursor move on.
        saveCursor(opts['cursor-file'], event.cursor);
        counter.seen += 1;
        counter.backoff = 500;
        if ((opts.until && state === opts.until) || (opts.maxEvents && counter.seen >= opts.maxEvents)) {
          finish(resolve, 'done');
          call.cancel();
        }
      } catch (e) {
        finish(reject, e);
        call.cancel();
      }
    });
    call.on('error', (err) => {
      if (err.code === grpc.status.CANCELLED && finished) return;
      if (err.code === grpc.status.UNAVAILABLE) {
        console.error(`gateway unavailable (${err.details}); retrying`);
        finish(resolve, 'retry');
      } else {
        finish(reject, err);
      }
    });
    call.on('end', () => {
      if (!finished) console.error('event stream ended; resuming');
      finish(resolve, 'retry');
    });
  });
}

async function main() {
  const opts = options();
  const gateway = loadGateway();
  const states = gateway.SessionState.type.value.map((v) => v.name);
  if (opts.until && !states.includes(opts.until)) {
    console.error(`--until: unknown state ${JSON.stringify(opts.until)}`);
    return 2;
  }
  const metadata = new grpc.Metadata();
  if (opts['api-key']) metadata.set('x-api-key', opts['api-key']);
  const client = new gateway.Gateway(opts.addr, grpc.credentials.createInsecure());

  try {
    let session;
    try {
      session = await unary(client, 'Init', { session_id: opts.session }, metadata);
    } catch (e) {
      console.error(`Init failed: ${grpc.status[e.code]}: ${e.details}`);
      return 1;
    }
    console.log(`session=${session.session_id} state=${session.state}`);

    const counter = { seen: 0, backoff: 500 };
    for (;;) {
      let outcome;
      try {
        outcome = await follow(client, opts, metadata, counter);
      } catch (e) {
        if (e.code !== undefined) console.error(`Events failed: ${grpc.status[e.code]}: ${e.details}`);
        else console.error(e.message);
        return 1;
      }
      if (outcome === 'done') return 0;
      // Resume from the saved cursor, so nothing is lost or seen twice.
      await new Promise((r) => setTimeout(r, counter.backoff));
      counter.backoff = Math.min(counter.backoff * 2, 10_000);
    }
  } finally {
    client.close();
  }
}

process.on('SIGINT', () => process.exit(130));
main().then(
  (code) => {
    process.exitCode = code;
  },
  (e) => {
    console.error(e);
    process.exitCode = 1;
  },
);
