#!/usr/bin/env python3
"""A stand-in for ``vfkit`` (v0.6.4) on a machine without macOS, for lifecycle tests.

Standard library only. It checks its command line as vfkit does (device options split on
every comma, raw disks only, files that must exist, a stale REST socket makes it exit),
appends its argv as one JSON line to ``$FAKE_VFKIT_RECORD`` (if set), writes a line to the
console log, listens on each ``virtio-vsock ...,connect`` socket (echoing what it gets), and
serves vfkit's REST API on the ``--restful-uri unix://`` socket:

- ``GET /vm/state`` -> ``{"state": "VirtualMachineStateRunning", "canStop": true, ...}``
- ``POST /vm/state {"state": "Stop"|"HardStop"|"Pause"|"Resume"}`` -> 202; Stop shuts the
  "guest" down (exit after a moment) unless ``$FAKE_VFKIT_GUEST_IGNORES_STOP`` is set;
  HardStop exits at once.
- ``GET /vm/inspect`` -> the parsed configuration.

SIGTERM exits (unless ``$FAKE_VFKIT_IGNORE_TERM`` is set: then only SIGKILL ends it).
``$FAKE_VFKIT_EXIT_AT_START`` makes it fail at start like a VM that cannot run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

DEVICE_OPTIONS = {
    "virtio-blk": {"path", "readonly", "deviceId"},
    "virtio-fs": {"sharedDir", "mountTag"},
    "virtio-vsock": {"port", "socketURL", "listen", "connect"},
    "virtio-serial": {"logFilePath", "stdio", "pty"},
    "virtio-net": {"nat", "mac", "fd", "unixSocketPath"},
    "virtio-rng": set(),
}

state = {"name": "VirtualMachineStateRunning"}
stop_event = threading.Event()
cleanup: list[str] = []


def fail(message: str) -> None:
    sys.stderr.write(f'level=fatal msg="{message}"\n')
    sys.stderr.flush()
    sys.exit(1)


def options(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(","):  # vfkit splits on every comma; no quoting
        key, _, value = part.partition("=")
        out[key] = value
    return out


def parse(argv: list[str]) -> dict[str, Any]:
    config: dict[str, Any] = {"devices": []}
    it = iter(argv)
    for arg in it:
        try:
            value = next(it)
        except StopIteration:
            fail(f"flag needs an argument: {arg}")
        if arg in ("--cpus", "--memory"):
            if not value.isdigit():
                fail(f"invalid argument {value!r} for {arg}")
            config[arg[2:]] = int(value)
        elif arg == "--bootloader":
            kind, _, rest = value.partition(",")
            if kind == "linux":
                # The cmdline is quoted and may hold spaces; kernel and initrd are required.
                head, _, cmdline = rest.partition('cmdline="')
                opts = options(head.rstrip(","))
                for key in ("kernel", "initrd"):
                    if not os.path.isfile(opts.get(key, "")):
                        fail(f"bootloader {key} {opts.get(key)!r}: no such file")
                if not cmdline.endswith('"'):
                    fail("bootloader cmdline must be quoted")
                config["bootloader"] = {"kind": kind, **opts, "cmdline": cmdline[:-1]}
            elif kind == "efi":
                opts = options(rest)
                if "variable-store" not in opts:
                    fail("efi bootloader needs variable-store")
                config["bootloader"] = {"kind": kind, **opts}
            else:
                fail(f"unknown bootloader {kind!r}")
        elif arg == "--device":
            kind, _, rest = value.partition(",")
            if kind not in DEVICE_OPTIONS:
                fail(f"unknown device type {kind!r}")
            opts = options(rest) if rest else {}
            unknown = set(opts) - DEVICE_OPTIONS[kind]
            if unknown:
                fail(f"unknown option(s) {sorted(unknown)} for {kind}")
            check_device(kind, opts)
            config["devices"].append({"kind": kind, **opts})
        elif arg == "--restful-uri":
            if not value.startswith("unix://"):
                fail("this fake serves unix:// only")
            path = value[len("unix://") :]
            if len(path.encode()) > 103:
                fail(f"socket path {path!r} is too long")
            config["rest"] = path
        else:
            fail(f"unknown flag: {arg}")
    if "bootloader" not in config:
        fail("missing --bootloader")
    return config


def check_device(kind: str, opts: dict[str, str]) -> None:
    if kind == "virtio-blk":
        path = opts.get("path", "")
        if not os.path.isabs(path) or not os.path.isfile(path):
            fail(f"virtio-blk path {path!r}: no such file")
        with open(path, "rb") as fh:
            if fh.read(4) == b"QFI\xfb":
                fail(f"{path}: qcow2 images are not supported, use a raw image")
    elif kind == "virtio-fs":
        if not os.path.isdir(opts.get("sharedDir", "")):
            fail(f"virtio-fs sharedDir {opts.get('sharedDir')!r}: not a folder")
        tag = opts.get("mountTag", "")
        if not tag or len(tag.encode()) >= 36:
            fail(f"virtio-fs mountTag {tag!r}: 1 to 35 bytes")
    elif kind == "virtio-vsock":
        if not opts.get("port", "").isdigit() or not opts.get("socketURL"):
            fail("virtio-vsock needs port and socketURL")
    elif (
        kind == "virtio-serial"
        and "logFilePath" in opts
        and not os.path.isdir(os.path.dirname(opts["logFilePath"]))
    ):
        fail(f"logFilePath {opts['logFilePath']!r}: folder missing")


def listen_unix(path: str) -> socket.socket:
    if os.path.exists(path):
        fail(f"{path} already exists (stale socket?)")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(8)
    cleanup.append(path)
    return sock


def serve_vsock(sock: socket.socket) -> None:
    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    while True:
        conn, _ = sock.accept()
        threading.Thread(target=echo, args=(conn,), daemon=True).start()


def exit_soon(delay: float) -> None:
    def later() -> None:
        time.sleep(delay)
        stop_event.set()

    threading.Thread(target=later, daemon=True).start()


def make_handler(config: dict[str, Any]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def address_string(self) -> str:
            return "unix"

        def reply(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/vm/state":
                running = state["name"] == "VirtualMachineStateRunning"
                self.reply(
                    200,
                    {
                        "state": state["name"],
                        "canStart": False,
                        "canPause": running,
                        "canResume": not running,
                        "canStop": running,
                        "canHardStop": True,
                    },
                )
            elif self.path == "/vm/inspect":
                self.reply(200, config)
            else:
                self.reply(404, {"error": "not found"})

        def do_POST(self) -> None:
            if self.path != "/vm/state":
                self.reply(404, {"error": "not found"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            try:
                wanted = json.loads(self.rfile.read(length)).get("state")
            except (ValueError, AttributeError):
                self.reply(400, {"error": "bad request"})
                return
            if wanted == "Stop":
                self.reply(202, {})
                if not os.environ.get("FAKE_VFKIT_GUEST_IGNORES_STOP"):
                    state["name"] = "VirtualMachineStateStopping"
                    exit_soon(0.3)
            elif wanted == "HardStop":
                self.reply(202, {})
                stop_event.set()
            elif wanted == "Pause":
                state["name"] = "VirtualMachineStatePaused"
                self.reply(202, {})
            elif wanted == "Resume":
                state["name"] = "VirtualMachineStateRunning"
                self.reply(202, {})
            else:
                self.reply(400, {"error": f"unknown state {wanted!r}"})

    return Handler


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def main() -> None:
    argv = sys.argv[1:]
    record = os.environ.get("FAKE_VFKIT_RECORD")
    if record:
        with open(record, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(argv) + "\n")
    config = parse(argv)
    if os.environ.get("FAKE_VFKIT_EXIT_AT_START"):
        fail("VZErrorDomain Code=1: the virtual machine failed to start")
    rest = config.get("rest")
    if rest and os.path.exists(rest):
        fail(f"listen unix {rest}: bind: address already in use")
    if os.environ.get("FAKE_VFKIT_IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda _s, _f: stop_event.set())
    for device in config["devices"]:
        if device["kind"] == "virtio-serial" and "logFilePath" in device:
            with open(device["logFilePath"], "a", encoding="utf-8") as fh:
                fh.write("[    0.000000] Linux version 6.1.0 (fake vfkit console)\n")
        if device["kind"] == "virtio-vsock" and "connect" in device:
            sock = listen_unix(device["socketURL"])
            threading.Thread(target=serve_vsock, args=(sock,), daemon=True).start()
    if rest:
        server = UnixHTTPServer(rest, make_handler(config))
        cleanup.append(rest)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stderr.write('level=info msg="virtual machine is running"\n')
    sys.stderr.flush()
    while not stop_event.wait(0.1):
        pass
    sys.stderr.write('level=info msg="virtual machine stopped"\n')
    for path in cleanup:
        with contextlib.suppress(OSError):
            os.unlink(path)
    os._exit(0)


if __name__ == "__main__":
    main()
