"""The guest activity monitor's parts, and the monitor itself run for real on this host
(root: the process connector needs CAP_NET_ADMIN; audit is left alone on a shared host)."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import threading
import time

import pytest

from cowork.guest import monitor as m


def test_argv_is_truncated_and_secrets_are_masked():
    argv = ["curl", "--token", "abc", "--password=hunter2", "API_KEY=s3cr3t",
            "Authorization: Bearer xyz", "sk-ant-" + "a" * 30, "x" * 400, "plain"]  # fmt: skip
    out = m.mask_argv(argv)
    joined = " ".join(out)
    for secret in ("abc", "hunter2", "s3cr3t", "xyz", "sk-ant-"):
        assert secret not in joined
    assert out[0] == "curl" and out[-1] == "plain"
    assert len(out[7]) <= m.MAX_ARG_LEN + 1
    many = m.mask_argv([str(i) for i in range(100)])
    assert len(many) == m.MAX_ARGS + 1 and many[-1] == "… 68 more"


def test_cloud_key_ids_of_any_length_are_masked():
    for key in ("AKIAIOSFODNN7EXAMPLE", "ASIAIOSFODNN7EXAMPLE", "AKIACOWORKE2EMARKER00"):
        assert m.mask_argv(["grep", "-e", key, "/"]) == ["grep", "-e", "***", "/"]


def test_proc_connector_messages_round_trip():
    msg = m.proc_listen_message()
    length, mtype = struct.unpack_from("=IH", msg)
    assert length == len(msg) == 16 + 20 + 4 and mtype == m.NLMSG_DONE
    event = m.PROC_EVENT_HDR.pack(m.PROC_EVENT_EXEC, 0, 1) + struct.pack("=ii", 42, 42)
    cn = m.CN_MSG.pack(1, 1, 0, 0, len(event), 0) + event
    data = m.NLMSG_HDR.pack(16 + len(cn), m.NLMSG_DONE, 0, 0, 0) + cn
    assert list(m.parse_proc_events(data)) == [(m.PROC_EVENT_EXEC, (42, 42))]


def test_audit_rule_and_records_parse():
    rule = m.audit_rule(m.AUDIT_ARCH_X86_64, [41, 42])
    assert len(rule) == 12 + 4 * 64 * 4 + 4  # struct audit_rule_data without a buffer
    mask = struct.unpack_from("=64I", rule, 12)
    assert mask[1] == (1 << 9) | (1 << 10)  # syscalls 41 and 42
    text = (
        "audit(1700000000.123:77): arch=c000003e syscall=41 success=no exit=-1 a0=2 a1=3 "
        'a2=1 a3=0 items=0 ppid=10 pid=11 uid=1000 comm="python3" exe="/usr/bin/python3.11"'
    )
    rec = m.parse_audit_syscall(text, {41: "socket"})
    assert rec is not None
    assert rec["syscall"] == "socket" and rec["pid"] == 11 and rec["uid"] == 1000
    assert rec["errno"] == 1 and rec["type"] == socket.SOCK_RAW
    assert rec["exe"] == "/usr/bin/python3.11"
    assert m.parse_audit_syscall(text.replace("success=no", "success=yes"), {41: "socket"}) is None
    in_progress = text.replace("exit=-1", "exit=-115")  # a non-blocking connect, not a failure
    assert m.parse_audit_syscall(in_progress, {41: "socket"}) is None
    addr = (struct.pack("<H", socket.AF_INET) + struct.pack(">H", 443)
            + socket.inet_aton("1.2.3.4") + b"\0" * 8)  # fmt: skip
    assert m.parse_sockaddr(addr.hex()) == "1.2.3.4:443"


def test_snmp_counters_report_failed_attempts(tmp_path):
    snmp = tmp_path / "snmp"
    snmp.write_text("Ip: Forwarding OutNoRoutes\nIp: 1 5\nTcp: AttemptFails\nTcp: 0\n")
    net = m.SnmpNet(str(snmp))
    assert net.read() == []
    snmp.write_text("Ip: Forwarding OutNoRoutes\nIp: 1 7\nTcp: AttemptFails\nTcp: 1\n")
    got = {r["counter"]: r["count"] for r in net.read()}
    assert got == {"Ip.OutNoRoutes": 2, "Tcp.AttemptFails": 1}


@pytest.mark.skipif(os.geteuid() != 0, reason="the process connector needs root")
def test_the_monitor_reports_processes_and_files(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "old").mkdir()
    chunks: list[bytes] = []
    mon = m.Monitor(str(root), chunks.append, use_audit=False)
    threading.Thread(target=mon.run, daemon=True).start()
    deadline = time.monotonic() + 10
    while not chunks and time.monotonic() < deadline:
        time.sleep(0.05)
    script = (f"cd {root} && echo a > f && mkdir d && mv f d/g && rm d/g && rm -r old && "
              "(sh -c 'sleep 0.5; :' --password=p4ss &) ; wait")  # fmt: skip
    subprocess.run(["sh", "-c", script], check=True)
    time.sleep(2.5)
    mon.stop.set()
    recs = [json.loads(x) for c in chunks for x in c.decode().splitlines()]
    assert recs[0]["t"] == "hello"
    assert any(r["t"] == "hb" for r in recs)
    files = [(r["op"], os.path.relpath(r["path"], root)) for r in recs if r["t"] == "file"]
    assert ("created", "f") in files and ("modified", "f") in files
    assert ("created", "d") in files and ("deleted", "d/g") in files
    assert ("deleted", "old") in files
    renamed = [r for r in recs if r["t"] == "file" and r["op"] == "renamed"]
    assert renamed and renamed[0]["to"] == str(root / "d" / "g")
    procs = [r for r in recs if r["t"] == "proc"]
    shs = [p for p in procs if (p.get("argv") or [""])[-1] == "--password=***"]
    assert shs and shs[0]["argv"] == ["sh", "-c", "sleep 0.5; :", "--password=***"]
    assert shs[0]["uid"] == 0 and shs[0]["ppid"] > 0 and shs[0]["exe"].endswith("sh")
    sleeps = [p for p in procs if (p.get("argv") or [""])[0] == "sleep"]
    assert sleeps and sleeps[0]["ppid"] == shs[0]["pid"]
    assert "p4ss" not in json.dumps(recs)


def _proc_whats(sock: socket.socket, seconds: float = 1.0) -> list[int]:
    whats: list[int] = []
    deadline = time.monotonic() + seconds
    sock.settimeout(0.1)
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        body = m.PROC_WHAT_OFFSET
        if len(data) >= body + 4:
            whats.append(struct.unpack_from("=I", data, body)[0])
    return whats


@pytest.mark.skipif(os.geteuid() != 0, reason="the process connector needs root")
def test_the_kernel_filter_keeps_fork_and_exec_and_drops_the_rest():
    socks = []
    for filtered in (True, False):
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, m.NETLINK_CONNECTOR)
        s.bind((0, m.CN_IDX_PROC))
        if filtered:
            assert m.attach_proc_filter(s)
        s.send(m.proc_listen_message())
        socks.append(s)
    try:
        subprocess.run(["/bin/true"], check=True)
        filtered, everything = (_proc_whats(s) for s in socks)
    finally:
        for s in socks:
            s.close()
    exit_event = 0x80000000
    assert exit_event in everything  # the connector does send more than fork and exec
    assert set(filtered) <= {m.PROC_EVENT_FORK, m.PROC_EVENT_EXEC}
    assert m.PROC_EVENT_EXEC in filtered and m.PROC_EVENT_FORK in filtered
    assert len(filtered) < len(everything)
