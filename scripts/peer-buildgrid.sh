#!/usr/bin/env bash
# Peer "buildgrid" for scripts/bench.sh: BuildGrid 0.4.4 from PyPI as a
# CAS + ActionCache on loopback (config: scripts/peer-buildgrid.yml).
#   peer-buildgrid.sh install        venv under $BUILDGRID_VENV (default /var/tmp/buildgrid)
#   peer-buildgrid.sh start DIR      start on a free port with data in DIR; prints "URL PID"
#   peer-buildgrid.sh stop DIR       stop the server started over DIR
# Every peer script answers these three commands; see PEERS in scripts/bench.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv=${BUILDGRID_VENV:-/var/tmp/buildgrid}
version=0.4.4

case "${1:-}" in
install)
    if ! "$venv/bin/bgd" --help >/dev/null 2>&1; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet "buildgrid==$version"
    fi
    ;;
start)
    dir=${2:?data dir}
    mkdir -p "$dir/cas"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    sed -e "s|@ADDR@|127.0.0.1:$port|" -e "s|@DATA@|$dir|" "$here/peer-buildgrid.yml" >"$dir/buildgrid.yml"
    "$venv/bin/bgd" server start "$dir/buildgrid.yml" >"$dir/server.log" 2>&1 &
    pid=$!
    echo "$pid" >"$dir/server.pid"
    for _ in $(seq 1 300); do
        if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$port),1)" 2>/dev/null; then
            echo "grpc://127.0.0.1:$port $pid"
            exit 0
        fi
        kill -0 "$pid" 2>/dev/null || { cat "$dir/server.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "buildgrid did not listen within 30 s; log:" >&2
    cat "$dir/server.log" >&2
    exit 1
    ;;
stop)
    dir=${2:?data dir}
    if [[ -f "$dir/server.pid" ]]; then
        pid=$(cat "$dir/server.pid")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$dir/server.pid"
    fi
    ;;
version)
    echo "BuildGrid $version (PyPI), Python $("$venv/bin/python" -c 'import platform; print(platform.python_version())')"
    ;;
*)
    echo "usage: $0 install | start DIR | stop DIR | version" >&2
    exit 2
    ;;
esac
