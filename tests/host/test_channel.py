"""The private channel against real parts without a VM: the real relay, the real OpenSSH
server (``sshd -i``) and a QEMU-like serial shim that keeps its stream across connections."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cowork.errors import ChannelError, CommandFailed
from cowork.host.channel import (
    Channel,
    Result,
    await_ack,
    guest_program,
    job_script,
    kill_script,
    parse_public_key,
)
from cowork.host.channel_fake import SSHD, FakeChannel, LocalGuest, temporary_guest
from cowork.host.events import EventBus, Kind, Recorder

pytestmark = pytest.mark.skipif(
    not os.path.exists(SSHD) or shutil.which("ssh-keygen") is None,
    reason="needs openssh-server (/usr/sbin/sshd) and ssh-keygen",
)


DATA = Path(__file__).resolve().parents[1] / "data" / "channel"


def test_job_and_kill_scripts_match_golden_files() -> None:
    job = job_script("0123abcd" * 2, "/workspace/my dir", {"A": "x y", "B": "it's"}, "echo $A")
    kill = kill_script("0123abcd" * 2)
    if os.environ.get("COWORK_UPDATE_GOLDEN"):
        (DATA / "job_script.sh").write_text(job)
        (DATA / "kill_script.sh").write_text(kill)
    assert job == (DATA / "job_script.sh").read_text()
    assert kill == (DATA / "kill_script.sh").read_text()


@pytest.mark.parametrize("job", ["../x", "ABCDEF0123456789", "abc", "a" * 65, "1234567g"])
def test_job_ids_that_are_not_plain_hex_are_refused(job: str) -> None:
    with pytest.raises(ValueError, match="job id"):
        job_script(job, "/", {}, "true")
    with pytest.raises(ValueError, match="job id"):
        kill_script(job)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PROXY_PORT = _free_port()


@pytest.fixture(scope="module")
def guest() -> Iterator[LocalGuest]:
    g, cleanup = temporary_guest(proxy_port=PROXY_PORT, env={"COWORK_TEST": "from sshd"})
    try:
        yield g
    finally:
        cleanup()


@pytest.fixture
def ch(guest: LocalGuest) -> Iterator[Channel]:
    with Channel.connect(guest.socket_path, timeout=30, **guest.connect_kwargs()) as channel:  # type: ignore[arg-type]
        yield channel


def connect(guest: LocalGuest, **kwargs: object) -> Channel:
    args = {**guest.connect_kwargs(), "timeout": 30.0, **kwargs}
    return Channel.connect(guest.socket_path, **args)  # type: ignore[arg-type]


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(b")") + 2 :].split()[0] == b"Z"


def _wait_gone(pid: int) -> bool:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.05)
    return False


# -- commands ---------------------------------------------------------------------------------


def test_echo_round_trip_exit_codes_and_separate_streams(ch: Channel) -> None:
    r = ch.run("echo out; echo err >&2; exit 3")
    assert (r.exited, r.stdout, r.stderr, r.timed_out, r.ok) == (3, "out\n", "err\n", False, False)
    assert ch.run("true").ok


def test_sequence_is_quoted_env_and_cwd_apply(ch: Channel, guest: LocalGuest) -> None:
    r = ch.run(["printf", "%s|", "a b", "$HOME", "it's"])
    assert r.stdout == "a b|$HOME|it's|"
    assert r.command == "printf '%s|' 'a b' '$HOME' 'it'\"'\"'s'"
    r = ch.run('echo "$A|$B|$COWORK_TEST"; pwd', env={"A": "x y", "B": "'\"$"})
    assert r.stdout == f"x y|'\"$|from sshd\n{guest.workdir}\n"
    assert ch.run("pwd", cwd="/").stdout == "/\n"


def test_signals_and_bad_cwd_report_like_a_shell_without_wrapper_noise(ch: Channel) -> None:
    r = ch.run("echo before; kill -KILL $$")
    assert (r.exited, r.stdout, r.stderr) == (137, "before\n", "")
    r = ch.run("true", cwd="/no/such/dir")
    assert r.exited == 1 and "/no/such/dir" in r.stderr


def test_bad_env_name_is_refused_before_anything_runs(ch: Channel) -> None:
    with pytest.raises(ChannelError, match="not valid"):
        ch.run("true", env={"A;rm": "x"})


def test_input_reaches_stdin(ch: Channel) -> None:
    assert ch.run("cat", input="hello\n").stdout == "hello\n"
    blob = os.urandom(1 << 20)
    r = ch.run("sha256sum", input=blob)
    import hashlib

    assert r.stdout.split()[0] == hashlib.sha256(blob).hexdigest()


def test_large_output_is_intact_and_streamed_to_the_callback(ch: Channel) -> None:
    chunks: list[bytes] = []
    r = ch.run("seq 1 1500000", on_stdout=chunks.append)
    expected = "".join(f"{i}\n" for i in range(1, 1500001))
    assert len(expected) > 10_000_000
    assert r.ok and r.stdout == expected
    assert b"".join(chunks).decode() == expected
    assert len(chunks) > 1


def test_output_arrives_while_the_command_is_still_running(ch: Channel, tmp_path: Path) -> None:
    flag = tmp_path / "seen-first"

    def on_stdout(chunk: bytes) -> None:
        if b"first" in chunk:
            flag.touch()

    # The command finishes only if the callback saw "first" before the command ended.
    r = ch.run(
        f"echo first; while [ ! -e {flag} ]; do sleep 0.05; done; echo second >&2",
        on_stdout=on_stdout,
        on_stderr=lambda b: None,
        timeout=30,
    )
    assert r.ok and r.stderr == "second\n"


def test_invalid_utf8_is_replaced_not_fatal(ch: Channel) -> None:
    assert ch.run(r"printf 'a\377b'").stdout == "a\ufffdb"


def test_timeout_kills_the_whole_process_group(ch: Channel, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    r = ch.run(f"sleep 1000 & echo $! > {pids}; echo $$ >> {pids}; sleep 1000", timeout=1)
    assert (r.exited, r.timed_out, r.ok) == (124, True, False)
    background, shell = (int(p) for p in pids.read_text().split())
    assert _wait_gone(background)
    assert _wait_gone(shell)
    # The channel is still usable.
    assert ch.run("echo still here").stdout == "still here\n"


def test_check_raises_command_failed_carrying_the_result(ch: Channel) -> None:
    with pytest.raises(CommandFailed, match="status 2") as exc:
        ch.run("echo oops >&2; exit 2", check=True)
    assert isinstance(exc.value.result, Result)
    assert exc.value.result.stderr == "oops\n"
    with pytest.raises(CommandFailed, match="in time"):
        ch.run("sleep 30", timeout=0.5, check=True)


def test_keyboard_interrupt_kills_the_command_and_propagates(ch: Channel, tmp_path: Path) -> None:
    pids = tmp_path / "pids"

    def on_stdout(chunk: bytes) -> None:
        if b"started" in chunk:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ch.run(f"sleep 1000 & echo $! > {pids}; echo started; wait", on_stdout=on_stdout)
    assert _wait_gone(int(pids.read_text()))


def test_a_stop_from_another_thread_kills_the_command(ch: Channel, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    stop = threading.Event()

    def on_stdout(chunk: bytes) -> None:
        if b"started" in chunk:
            threading.Thread(target=stop.set).start()

    with pytest.raises(KeyboardInterrupt):
        ch.run(f"sleep 1000 & echo $! > {pids}; echo started; wait", on_stdout=on_stdout,
               stop=stop)  # fmt: skip
    assert _wait_gone(int(pids.read_text()))
    assert ch.run("echo still here").stdout == "still here\n"


def test_concurrent_commands_share_one_transport(ch: Channel) -> None:
    results: dict[int, Result] = {}

    def work(i: int) -> None:
        results[i] = ch.run(f"sleep 0.2; seq 1 {1000 * (i + 1)} | tail -n 1; exit {i}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(8):
        assert (results[i].stdout, results[i].exited) == (f"{1000 * (i + 1)}\n", i)


def test_commands_emit_events(guest: LocalGuest) -> None:
    bus = EventBus(session="s1")
    seen = Recorder()
    bus.subscribe(seen)
    with connect(guest, events=bus) as ch:
        ch.run("exit 4")
    (started,) = seen.of(Kind.COMMAND_STARTED)
    (finished,) = seen.of(Kind.COMMAND_FINISHED)
    assert started.fields["command"] == "exit 4"
    assert finished.fields["exited"] == 4 and finished.fields["timed_out"] is False


def test_after_close_calls_raise_channel_error(guest: LocalGuest) -> None:
    ch = connect(guest)
    ch.close()
    assert not ch.is_alive()
    with pytest.raises(ChannelError, match="closed"):
        ch.run("true")


# -- connecting -------------------------------------------------------------------------------


def test_host_key_mismatch_is_refused_without_retrying(guest: LocalGuest, tmp_path: Path) -> None:
    other = LocalGuest.__new__(LocalGuest)  # only for its key generation below
    del other
    key = tmp_path / "k"
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    wrong = (tmp_path / "k.pub").read_text()
    before = guest.shim.connections
    with pytest.raises(ChannelError, match="host key mismatch"):
        connect(guest, host_key=wrong)
    assert guest.shim.connections == before + 1
    # The same key type with one byte changed is also refused.
    kind, blob = parse_public_key(guest.host_key)
    import base64

    flipped = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(ChannelError, match="host key mismatch"):
        connect(guest, host_key=f"{kind} {base64.b64encode(flipped).decode()}")


def test_any_failure_while_checking_the_host_key_refuses(
    guest: LocalGuest, monkeypatch: pytest.MonkeyPatch
) -> None:
    import paramiko

    def broken(self: object) -> object:
        raise RuntimeError("key parsing blew up")

    monkeypatch.setattr(paramiko.Transport, "get_remote_server_key", broken)
    with pytest.raises(ChannelError, match="refusing"):
        connect(guest)


def test_unknown_client_key_is_refused(guest: LocalGuest, tmp_path: Path) -> None:
    import subprocess

    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    with pytest.raises(ChannelError, match="refused the session's client key"):
        connect(guest, client_key=key)


def test_no_guest_times_out_with_a_plain_message(tmp_path: Path, guest: LocalGuest) -> None:
    with pytest.raises(ChannelError, match="did not answer") as exc:
        Channel.connect(
            tmp_path / "missing.sock",
            host_key=guest.host_key,
            client_key=guest.client_key,
            timeout=0.5,
        )
    assert "missing.sock" in str(exc.value)


def test_await_ack_discards_before_and_keeps_what_follows() -> None:
    a, b = socket.socketpair()
    with a, b:
        nonce = "ab" * 16
        b.sendall(b"stale SSH-2.0-x\r\nACK " + b"cd" * 16 + b"\nACK " + nonce.encode())
        b.sendall(b"\nSSH-2.0-OpenSSH_9.2\r\n")
        discarded = await_ack(a, nonce, time.monotonic() + 5)
        assert discarded == len(b"stale SSH-2.0-x\r\nACK " + b"cd" * 16 + b"\n")
        assert a.recv(100) == b"SSH-2.0-OpenSSH_9.2\r\n"


def test_stale_bytes_both_ways_are_discarded(guest: LocalGuest) -> None:
    guest.shim.queue_stale(
        to_guest=b"\x00garbage\nSYNC " + b"1" * 32 + b"\nSSH-2.0-paramiko\r\n",
        to_host=b"ACK " + b"1" * 32 + b"\nSSH-2.0-OpenSSH_old\r\n\x00\x01binary",
    )
    with connect(guest) as ch:
        assert ch.run("echo fine").stdout == "fine\n"


def _abort_midway(ch: Channel) -> None:
    """Start a 50 MB transfer and cut the connection once some of it has arrived."""
    got = threading.Event()
    total = [0]
    errors: list[BaseException] = []

    def on_stdout(chunk: bytes) -> None:
        total[0] += len(chunk)
        if total[0] > 1 << 20:
            got.set()

    def transfer() -> None:
        try:
            ch.run("head -c 50000000 /dev/zero | tr '\\0' x", on_stdout=on_stdout)
        except ChannelError as exc:
            errors.append(exc)

    t = threading.Thread(target=transfer)
    t.start()
    assert got.wait(60)
    ch.close()
    t.join(60)
    assert not t.is_alive()
    assert errors, "the aborted transfer should end with ChannelError"


def _relay_holds_port(g: LocalGuest) -> bool:
    port = os.path.realpath(g.shim.port_path)
    fds = Path(f"/proc/{g._relay.pid}/fd")
    try:
        return any(os.path.realpath(fd) == port for fd in fds.iterdir())
    except OSError:
        return False


def test_a_host_that_hangs_up_while_the_relay_is_not_reading_does_not_strand_it() -> None:
    # A hung-up port reads end-of-file for ever. A relay that is not blocked in a read at
    # the moment the host goes away (here: stopped, as a busy guest deschedules it) must
    # notice that the port was re-created instead of waiting on the dead one.
    g, cleanup = temporary_guest(hangup=True, proxy_port=PROXY_PORT)
    try:
        with connect(g) as ch:
            assert ch.run("true").ok
        deadline = time.monotonic() + 10
        while not _relay_holds_port(g) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _relay_holds_port(g), "the relay never opened the port"
        os.kill(g._relay.pid, signal.SIGSTOP)
        try:
            before = g.shim.connections
            quiet = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            quiet.connect(str(g.socket_path))
            while g.shim.connections == before and time.monotonic() < deadline:
                time.sleep(0.01)
            quiet.close()
            while _relay_holds_port(g) and time.monotonic() < deadline:
                time.sleep(0.01)  # the shim has hung up and re-created the port
        finally:
            os.kill(g._relay.pid, signal.SIGCONT)
        with connect(g, timeout=20.0) as ch:
            assert ch.run("echo back").stdout == "back\n"
    finally:
        cleanup()


@pytest.mark.parametrize("hangup", [True, False], ids=["qemu-like", "port-persists"])
def test_twenty_reconnects_in_a_row_some_after_aborted_transfers(hangup: bool) -> None:
    g, cleanup = temporary_guest(hangup=hangup, proxy_port=PROXY_PORT)
    try:
        for i in range(20):
            ch = connect(g, attempt_timeout=1.0)
            try:
                r = ch.run(f"echo round-{i}; seq 1 20000 | sha256sum")
                assert r.stdout.splitlines()[0] == f"round-{i}"
                import hashlib

                want = hashlib.sha256("".join(f"{n}\n" for n in range(1, 20001)).encode())
                assert r.stdout.splitlines()[1].split()[0] == want.hexdigest()
                if i % 4 == 1:
                    _abort_midway(ch)
            finally:
                ch.close()
    finally:
        cleanup()


def test_a_guest_that_stops_answering_is_detected() -> None:
    g, cleanup = temporary_guest(proxy_port=PROXY_PORT)
    try:
        ch = connect(g, keepalive=0.3)
        assert ch.run("true").ok
        os.killpg(g._relay.pid, signal.SIGSTOP)  # relay and sshd freeze, like a hung guest
        try:
            deadline = time.monotonic() + 20
            while ch.is_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not ch.is_alive()
            with pytest.raises(ChannelError, match="lost"):
                ch.run("true")
        finally:
            os.killpg(g._relay.pid, signal.SIGCONT)
            ch.close()
    finally:
        cleanup()


# -- forwards ---------------------------------------------------------------------------------


def _echo_server() -> tuple[int, socket.socket]:
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(b"echo:" + data)

    threading.Thread(target=serve, daemon=True).start()
    return int(srv.getsockname()[1]), srv


CLIENT = (
    "python3 -c \"import socket,sys; s=socket.create_connection(('127.0.0.1',{port})); "
    "s.sendall(b'ping'); s.shutdown(socket.SHUT_WR); "
    "sys.stdout.write(b''.join(iter(lambda: s.recv(9999), b'')).decode())\""
)


def test_reverse_forward_round_trip_and_cancel(ch: Channel) -> None:
    port, srv = _echo_server()
    with srv:
        cancel = ch.reverse_forward(PROXY_PORT, ("127.0.0.1", port))
        try:
            r = ch.run(CLIENT.format(port=PROXY_PORT), timeout=30)
            assert (r.exited, r.stdout) == (0, "echo:ping"), r.stderr
            r = ch.run(CLIENT.format(port=PROXY_PORT), timeout=30)
            assert r.stdout == "echo:ping"
        finally:
            cancel()
        r = ch.run(CLIENT.format(port=PROXY_PORT), timeout=30)
        assert r.exited != 0 and "Connection refused" in r.stderr


def test_reverse_forward_to_a_handler(ch: Channel) -> None:
    def handler(conn: object) -> None:
        data = conn.recv(100)  # type: ignore[attr-defined]
        conn.sendall(b"handled:" + data)  # type: ignore[attr-defined]

    cancel = ch.reverse_forward(PROXY_PORT, handler)
    try:
        r = ch.run(CLIENT.format(port=PROXY_PORT), timeout=30)
        assert r.stdout == "handled:ping"
    finally:
        cancel()


def test_reverse_forward_outside_the_permitted_port_is_refused(ch: Channel) -> None:
    with pytest.raises(ChannelError, match="refused to listen"):
        ch.reverse_forward(_free_port(), ("127.0.0.1", 9))


# -- terminals --------------------------------------------------------------------------------


def _read_until(pty: object, needle: bytes) -> bytes:
    got = b""
    deadline = time.monotonic() + 20
    while needle not in got:
        assert time.monotonic() < deadline, got
        try:
            chunk = pty.read(4096, timeout=0.5)  # type: ignore[attr-defined]
        except TimeoutError:
            continue
        if not chunk:
            break
        got += chunk
    return got


def test_pty_size_resize_input_and_exit_status(ch: Channel) -> None:
    pty = ch.open_pty("stty size; read x; stty size; exit 3", term="xterm", cols=100, rows=30)
    try:
        assert b"30 100" in _read_until(pty, b"30 100")
        pty.resize(120, 40)
        pty.write("\n")
        assert b"40 120" in _read_until(pty, b"40 120")
        assert pty.exit_status(timeout=20) == 3
    finally:
        pty.close()


def test_interactive_bridges_local_fds_until_exit(ch: Channel) -> None:
    pty = ch.open_pty("bash --norc --noprofile", term="dumb", cols=80, rows=24)
    stdin_r, stdin_w = os.pipe()
    out_r, out_w = os.pipe()
    os.write(stdin_w, b"echo hi-$((40+2)); exit 5\n")
    os.close(stdin_w)
    try:
        status = pty.interactive(stdin_r, out_w)
    finally:
        os.close(stdin_r)
        os.close(out_w)
    with os.fdopen(out_r, "rb") as fh:
        output = fh.read()
    assert status == 5
    assert b"hi-42" in output


# -- the fake ---------------------------------------------------------------------------------


def test_fake_channel_keeps_the_same_contract(tmp_path: Path) -> None:
    fake = FakeChannel(tmp_path, env={"BASE": "1"})
    r = fake.run(["sh", "-c", 'echo "$BASE$X"; echo e >&2; pwd; exit 7'], env={"X": "2"})
    assert (r.exited, r.stdout, r.stderr) == (7, f"12\n{tmp_path}\n", "e\n")
    assert fake.run("cat", input=b"in").stdout == "in"
    pids = tmp_path / "pids"
    r = fake.run(f"sleep 1000 & echo $! > {pids}; sleep 1000", timeout=0.5)
    assert (r.exited, r.timed_out) == (124, True)
    assert _wait_gone(int(pids.read_text()))
    with pytest.raises(CommandFailed):
        fake.run("exit 1", check=True)
    (tmp_path / "sub").mkdir()
    assert fake.run("pwd", cwd="/workspace/sub").stdout == f"{tmp_path}/sub\n"
    assert fake.commands[0] == "sh -c 'echo \"$BASE$X\"; echo e >&2; pwd; exit 7'"
    fake.close()
    with pytest.raises(ChannelError):
        fake.run("true")


def test_fake_channel_environment_is_its_own_and_guest_code_is_shipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COWORK_HOST_ONLY", "leak")
    fake = FakeChannel(tmp_path)
    r = fake.run('echo "${COWORK_HOST_ONLY:-none} $HOME"')
    assert r.stdout == f"none {tmp_path}\n"
    assert fake.outputs == [r.stdout, ""]
    lib = Path(fake.guest_lib)
    assert (lib / "cowork/guest/fileops.py").read_text() == (
        Path(__file__).parents[2] / "cowork/guest/fileops.py"
    ).read_text()
    assert "fileops.py" in guest_program(fake, "fileops")
    del fake
    import gc

    gc.collect()
    assert not lib.exists()
