#!/usr/bin/env python3
"""Example wagate client: starts a session and follows its events from a saved cursor.

The gRPC stubs are generated from the repository's proto/ directory into a
temporary directory at start-up, so nothing generated is kept beside this file.

Every event is printed on one line that starts with its cursor, e.g.

    cursor=4 seq=1 session=demo qr=2@...
    cursor=9 seq=3 session=demo state=CONNECTED jid=15551234567:3@s.whatsapp.net

and the cursor is saved to --cursor-file once the event has been handled, so
a restarted client resumes exactly after the last event it processed.
"""

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
import time

PROTO_ROOT = os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "proto")
)
GATEWAY_PROTO = "wagate/v1/gateway.proto"


def load_stubs():
    """Compiles gateway.proto with grpc_tools and imports the generated modules."""
    from grpc_tools import protoc

    # grpc_tools ships google/protobuf/*.proto; timestamp.proto comes from there.
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    out_dir = tempfile.mkdtemp(prefix="wagate-stubs-")
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            GATEWAY_PROTO,
        ]
    )
    try:
        if status != 0:
            raise SystemExit(f"protoc failed on {PROTO_ROOT}/{GATEWAY_PROTO} (exit {status})")
        sys.path.insert(0, out_dir)
        pb2 = importlib.import_module("wagate.v1.gateway_pb2")
        pb2_grpc = importlib.import_module("wagate.v1.gateway_pb2_grpc")
    finally:
        # Once imported the modules live in memory; the files are not needed.
        if out_dir in sys.path:
            sys.path.remove(out_dir)
        shutil.rmtree(out_dir, ignore_errors=True)
    return pb2, pb2_grpc


def read_cursor(path):
    """The saved cursor, or None when there is none yet."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    if not text.isdigit():
        raise SystemExit(f"{path}: not a cursor: {text!r}")
    return int(text)


def save_cursor(path, cursor):
    """Writes the cursor atomically: a crash leaves the old or the new value, never half."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".cursor-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(f"{cursor}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def print_qr(qr):
    """Draws the QR in the terminal when the optional `qrcode` package is installed."""
    try:
        import qrcode
    except ImportError:
        return
    code = qrcode.QRCode(border=1)
    code.add_data(qr)
    code.print_ascii(invert=True)


def describe(pb2, event):
    head = f"cursor={event.cursor} seq={event.seq} session={event.session_id}"
    kind = event.WhichOneof("payload")
    if kind == "qr":
        return f"{head} qr={event.qr.qr}", None
    if kind == "connection":
        state = pb2.SessionState.Name(event.connection.state)
        line = f"{head} state={state}"
        if event.connection.jid:
            line += f" jid={event.connection.jid}"
        if event.connection.reason:
            line += f" reason={json.dumps(event.connection.reason)}"
        return line, state
    # Event kinds this client does not know yet are still printed and acknowledged.
    return f"{head} event={kind or 'unknown'}", None


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--addr", default="127.0.0.1:50051", help="gateway address (plaintext)")
    p.add_argument("--api-key", default=os.environ.get("WAGATE_API_KEY"), help="sent as x-api-key")
    p.add_argument("--session", default="demo", help="session id to Init and follow")
    p.add_argument("--cursor-file", default="wagate-demo.cursor", help="where the last cursor is kept")
    p.add_argument("--until", default="CONNECTED", help="exit 0 when this state is seen ('' = never)")
    p.add_argument("--max-events", type=int, default=0, help="exit 0 after this many events (0 = no limit)")
    return p.parse_args()


def main():
    args = parse_args()
    import grpc

    pb2, pb2_grpc = load_stubs()
    if args.until and args.until not in pb2.SessionState.keys():
        print(f"--until: unknown state {args.until!r}", file=sys.stderr)
        return 2
    metadata = [("x-api-key", args.api_key)] if args.api_key else []

    with grpc.insecure_channel(args.addr) as channel:
        stub = pb2_grpc.GatewayStub(channel)
        try:
            session = stub.Init(
                pb2.InitRequest(session_id=args.session), metadata=metadata, timeout=30
            )
        except grpc.RpcError as e:
            print(f"Init failed: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
        print(f"session={session.session_id} state={pb2.SessionState.Name(session.state)}", flush=True)

        seen = 0
        backoff = 0.5
        while True:
            cursor = read_cursor(args.cursor_file)
            if cursor is None:
                request = pb2.EventsRequest(session_ids=[args.session], from_beginning=True)
            else:
                request = pb2.EventsRequest(session_ids=[args.session], after_cursor=cursor)
            try:
                for event in stub.Events(request, metadata=metadata):
                    backoff = 0.5
                    line, state = describe(pb2, event)
                    print(line, flush=True)
                    if event.WhichOneof("payload") == "qr":
                        print_qr(event.qr.qr)
                    # Only after the event is fully handled does the cursor move on.
                    save_cursor(args.cursor_file, event.cursor)
                    seen += 1
                    if args.until and state == args.until:
                        return 0
                    if args.max_events and seen >= args.max_events:
                        return 0
                print("event stream ended; resuming", file=sys.stderr, flush=True)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    print(f"Events failed: {e.code().name}: {e.details()}", file=sys.stderr)
                    return 1
                print(f"gateway unavailable ({e.details()}); retrying", file=sys.stderr, flush=True)
            # Resume from the saved cursor, so nothing is lost or seen twice.
            time.sleep(backoff)
            backoff = min(backoff * 2, 10.0)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
