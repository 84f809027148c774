#!/usr/bin/env bash
# End-to-end check of the example clients in clients/examples/ against a real
# gateway: `wagate serve --sim` on a free loopback port with an API key. For
# each example (Python, Node):
#   1. it Inits a session and prints the QR; a simulated phone scans it;
#      the example exits 0 once it sees CONNECTED, having saved its cursor;
#   2. the simulator kicks the device (stream error 503), the session
#      reconnects, and the example, run again with the same cursor file,
#      prints only events after the saved cursor and exits on the new CONNECTED;
#   3. without the API key it fails with UNAUTHENTICATED.
# Every wait is bounded; the server and examples are stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
started=$SECONDS

key="examples-check-key"
step_timeout=${EXAMPLES_STEP_TIMEOUT:-60}

fail() {
    echo "examples-check: FAIL: $*" >&2
    exit 1
}

# --- build (or reuse) the gateway binary -----------------------------------
target_dir=${CARGO_TARGET_DIR:-target}
case $target_dir in /*) ;; *) target_dir=$root/$target_dir ;; esac
cargo build --locked --quiet --bin wagate
bin=$target_dir/debug/wagate
[ -x "$bin" ] || fail "no gateway binary at $bin"
grpcurl=$(scripts/ensure-grpcurl.sh)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/wagate-examples.XXXXXX")
pids=()
cleanup() {
    local status=$?
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ "$status" -ne 0 ]; then
        for f in "$tmp"/*.out "$tmp"/server.log; do
            [ -f "$f" ] || continue
            echo "----- $(basename "$f") (last 40 lines)" >&2
            tail -n 40 "$f" >&2
        done
    fi
    rm -rf "$tmp"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- gateway with the in-process simulator ---------------------------------
# The kernel picks a free port; the tiny window before the server binds it is
# acceptable on a loopback-only check.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
addr=127.0.0.1:$port
WAGATE_API_KEYS=$key RUST_LOG=${RUST_LOG:-info} \
    "$bin" serve --sim --listen "$addr" --data-dir "$tmp/data" --drain-seconds 0 \
    >"$tmp/server.log" 2>&1 &
server=$!
pids+=("$server")

rpc() { # rpc METHOD JSON
    "$grpcurl" -plaintext -max-time 10 -H "x-api-key: $key" -d "$2" "$addr" "$1"
}

# Dependencies install while the server starts.
echo "examples-check: installing example dependencies"
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r clients/examples/python/requirements.txt
(cd clients/examples/node && npm ci --no-audit --no-fund --loglevel=error)

deadline=$((SECONDS + step_timeout))
# Health itself needs no key, but grpcurl's reflection lookup does.
until "$grpcurl" -plaintext -max-time 2 -H "x-api-key: $key" "$addr" grpc.health.v1.Health/Check 2>/dev/null |
    grep -q '"SERVING"'; do
    kill -0 "$server" 2>/dev/null || fail "the gateway exited during start-up"
    [ "$SECONDS" -lt "$deadline" ] || fail "the gateway was not SERVING within ${step_timeout}s"
    sleep 0.2
done
echo "examples-check: gateway serving on $addr"

# Prints the cursors of the event lines in a file, one per line.
cursors() { sed -n 's/^cursor=\([0-9][0-9]*\) .*/\1/p' "$1"; }

# check_example NAME PHONE CMD...
check_example() {
    local name=$1 phone=$2
    shift 2
    local session="example-$name"
    local cursor_file="$tmp/$name.cursor"
    local out1="$tmp/$name.1.out" out2="$tmp/$name.2.out" out3="$tmp/$name.3.out"
    local common=(--addr "$addr" --session "$session" --cursor-file "$cursor_file")

    # 1. Pair: wait for the QR, scan it, wait for CONNECTED. The output
    # file exists before the client starts: the loop below reads it at once.
    : >"$out1"
    timeout "$step_timeout" "$@" "${common[@]}" --api-key "$key" --until CONNECTED >"$out1" 2>&1 &
    local pid=$!
    pids+=("$pid")
    local qr="" deadline=$((SECONDS + step_timeout))
    while :; do
        qr=$(sed -n "s/^cursor=[0-9]* seq=[0-9]* session=$session qr=//p" "$out1" | head -n 1)
        [ -n "$qr" ] && break
        kill -0 "$pid" 2>/dev/null || fail "$name: exited before printing a QR"
        [ "$SECONDS" -lt "$deadline" ] || fail "$name: no QR within ${step_timeout}s"
        sleep 0.1
    done
    local scan jid
    scan=$(rpc wagate.sim.v1.Simulator/ScanQr "{\"phone\":\"$phone\",\"qr\":\"$qr\"}") ||
        fail "$name: ScanQr failed"
    jid=$(printf '%s' "$scan" | sed -n 's/.*"deviceJid": *"\([^"]*\)".*/\1/p')
    [ -n "$jid" ] || fail "$name: ScanQr returned no device: $scan"
    local rc=0
    wait "$pid" || rc=$?
    [ "$rc" -eq 0 ] || fail "$name: first run exited $rc"
    grep -q "^cursor=[0-9]* .* state=CONNECTED jid=$jid" "$out1" || fail "$name: first run saw no CONNECTED"
    local saved last
    saved=$(tr -d '[:space:]' <"$cursor_file")
    last=$(cursors "$out1" | tail -n 1)
    [ "$saved" = "$last" ] || fail "$name: saved cursor $saved is not the last event's ($last)"

    # 2. Force a reconnect, then resume from the saved cursor.
    rpc wagate.sim.v1.Simulator/Kick "{\"jid\":\"$jid\",\"code\":503}" | grep -q '"connections": 1' ||
        fail "$name: Kick ended no connection"
    rc=0
    timeout "$step_timeout" "$@" "${common[@]}" --api-key "$key" --until CONNECTED >"$out2" 2>&1 || rc=$?
    [ "$rc" -eq 0 ] || fail "$name: resumed run exited $rc"
    local c
    for c in $(cursors "$out2"); do
        [ "$c" -gt "$saved" ] || fail "$name: resumed run replayed cursor $c (saved $saved)"
    done
    ! grep -q ' qr=' "$out2" || fail "$name: resumed run printed a QR again"
    grep -q "^cursor=[0-9]* .* state=CONNECTING .*reason=\"stream error 503\"" "$out2" ||
        fail "$name: resumed run did not see the 503 disconnect"
    grep -q "^cursor=[0-9]* .* state=CONNECTED jid=$jid" "$out2" ||
        fail "$name: resumed run saw no new CONNECTED"
    local resumed
    resumed=$(tr -d '[:space:]' <"$cursor_file")
    [ "$resumed" -gt "$saved" ] || fail "$name: cursor did not advance ($saved -> $resumed)"

    # 3. The gateway refuses a client without the key.
    rc=0
    timeout "$step_timeout" "$@" "${common[@]}" --api-key "" >"$out3" 2>&1 || rc=$?
    if [ "$rc" -ne 1 ] || ! grep -q UNAUTHENTICATED "$out3"; then
        fail "$name: run without the API key exited $rc, not 1 with UNAUTHENTICATED"
    fi

    echo "examples-check: $name ok (paired as $jid; resumed after cursor $saved to $resumed, no duplicates)"
}

check_example python +15550001001 "$tmp/venv/bin/python" clients/examples/python/wagate_example.py
check_example node +15550001002 node clients/examples/node/wagate-example.js

# --- a scripted wagatectl session ---------------------------------------
# init → qr → ScanQr (grpcurl) → status → send → events, each to completion.
cargo build --locked --quiet -p wagatectl --bin wagatectl
ctl=$target_dir/debug/wagatectl
[ -x "$ctl" ] || fail "no wagatectl binary at $ctl"
wctl() { timeout "$step_timeout" "$ctl" --addr "http://$addr" --api-key "$key" --json "$@"; }
json_field() { # json_field FIELD < JSON-LINES: the field of the first line that has it
    python3 -c 'import json, sys
field = sys.argv[1]
for line in sys.stdin:
    try:
        value = json.loads(line).get(field)
    except ValueError:
        continue
    if value not in (None, ""):
        print(value)
        break' "$1"
}
ctl_session=ctl-demo ctl_phone=+15550001003 ctl_peer=+15550001004
wctl init "$ctl_session" >"$tmp/ctl-init.out" || fail "wagatectl init failed"
: >"$tmp/ctl-qr.out" # exists before the background job opens it
wctl qr "$ctl_session" >>"$tmp/ctl-qr.out" 2>&1 &
qr_pid=$!
pids+=("$qr_pid")
deadline=$((SECONDS + step_timeout))
ctl_qr=""
while [ -z "$ctl_qr" ]; do
    ctl_qr=$(json_field qr <"$tmp/ctl-qr.out")
    [ -n "$ctl_qr" ] && break
    kill -0 "$qr_pid" 2>/dev/null || fail "wagatectl qr exited before showing a QR"
    [ "$SECONDS" -lt "$deadline" ] || fail "wagatectl qr showed no QR within ${step_timeout}s"
    sleep 0.1
done
rpc wagate.sim.v1.Simulator/ScanQr "{\"phone\":\"$ctl_phone\",\"qr\":\"$ctl_qr\"}" >/dev/null ||
    fail "wagatectl: ScanQr failed"
rc=0
wait "$qr_pid" || rc=$?
[ "$rc" -eq 0 ] || fail "wagatectl qr exited $rc after the scan"
grep -q '"type":"connected"' "$tmp/ctl-qr.out" || fail "wagatectl qr did not report the connection"
wctl status "$ctl_session" | grep -q '"state":"CONNECTED"' || fail "wagatectl status is not CONNECTED"
rpc wagate.sim.v1.Simulator/CreateAccount "{\"phone\":\"$ctl_peer\",\"push_name\":\"Peer\"}" >/dev/null ||
    fail "CreateAccount failed"
sent_id=$(wctl send "$ctl_session" "$ctl_peer" "hello from wagatectl" | json_field message_id)
[ -n "$sent_id" ] || fail "wagatectl send returned no message id"
rpc wagate.sim.v1.Simulator/SendText \
    "{\"from_phone\":\"$ctl_peer\",\"to\":\"$ctl_phone\",\"text\":\"hello wagatectl\"}" >/dev/null ||
    fail "SendText failed"
# Our own text (a from_me message event), the phone's delivery receipt for
# it, and the phone's text.
wctl events --session "$ctl_session" --type message --type receipt --from-beginning --limit 3 \
    >"$tmp/ctl-events.out" || fail "wagatectl events did not see three events"
grep -q '"from_me":true' "$tmp/ctl-events.out" || fail "no from_me event for our own text"
grep -q "\"message_ids\":\[\"$sent_id\"\]" "$tmp/ctl-events.out" || fail "no receipt for $sent_id"
grep -q '"text":"hello wagatectl"' "$tmp/ctl-events.out" || fail "no message event with the phone's text"
rpc wagate.sim.v1.Simulator/Inbox "{\"phone\":\"$ctl_peer\"}" | grep -q '"text": "hello from wagatectl"' ||
    fail "the phone's inbox lacks the text wagatectl sent"
echo "examples-check: wagatectl ok (init, qr, scan, status, send $sent_id, events)"

echo "examples-check: both examples and wagatectl passed in $((SECONDS - started))s"
