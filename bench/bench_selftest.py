"""Cost of the session-start gateway self-test in a real guest; prints JSON.

    flock /tmp/cowork-vm.lock .venv/bin/python bench/bench_selftest.py [--n 5]

Boots one sealed VM with a gateway and two grants (a fake resolver: nothing leaves the
machine), then times the self-test's one guest command ``--n`` times, next to a bare
``true`` on the same channel (so the probes' own cost can be told from the channel's) and a
bare ``python3 -I -S -c pass`` (what starting an interpreter in the guest would add; the
probes, run by the guest's bash, start none). Goal: under 1 s under TCG.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cowork.host.egress import selftest
from cowork.host.egress.grants import Grant
from cowork.host.events import EventBus
from cowork.host.session import EgressSettings, Session, VMSettings
from tests.e2e.conftest import make_paths, make_workspace
from tests.host.egress.conftest import FakeResolver, test_address_check

GRANTS = [Grant(id="docs", host="docs.allowed.test", port=8443), Grant(id="w", host="*.f.test")]


def _median(fn: Callable[[], object], n: int) -> dict[str, float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return {"median_s": round(statistics.median(samples), 3), "max_s": round(max(samples), 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cowork-bench-selftest-"))
    paths = make_paths(root / "cowork")
    ws = make_workspace(root)
    egress = EgressSettings(
        grants_provider=lambda: GRANTS,
        resolver=FakeResolver({}),
        address_check=test_address_check,
    )
    sess = Session.open(
        ws, paths=paths, events=EventBus(), egress=egress,
        settings=VMSettings(claude_dir=root / "none", memory_mib=1024),
    )  # fmt: skip
    try:
        token = sess.gateway.proxy_token if sess.gateway else ""

        def probe() -> None:
            report = selftest.run_selftest(
                sess.channel, token=token, grants=GRANTS, proxy_port=3128
            )
            assert report.ok, [(r.probe.name, r.observed) for r in report.failures()]

        result = {
            "selftest": _median(probe, args.n),
            "channel_true": _median(lambda: sess.channel.run("true"), args.n),
            "python3_pass": _median(
                lambda: sess.channel.run(["python3", "-I", "-S", "-c", "pass"]), args.n
            ),
            "accel": sess.state.accel,
            "probes": len(selftest.build_plan(GRANTS, 3128)),
        }
        print(json.dumps(result, indent=2))
    finally:
        sess.close()
        shutil.rmtree(paths.runtime, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
