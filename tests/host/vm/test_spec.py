from pathlib import Path

import pytest

from cowork.errors import UsageError
from cowork.host.vm.spec import Share, VMSpec


def spec(**over):
    base = dict(
        name="cowork-ws-abc123",
        kernel=Path("/img/vmlinuz"),
        initrd=Path("/img/initrd.img"),
        disk=Path("/s/overlay.qcow2"),
        seed=Path("/s/seed.img"),
        channel_socket=Path("/run/c/channel.sock"),
        console_log=Path("/s/console.log"),
        shares=(Share("cw-ws", Path("/home/u/ws"), False),),
    )
    base.update(over)
    return VMSpec(**base)


def test_a_good_spec_has_no_problems():
    assert spec().problems() == []
    assert spec().validate() == spec()


@pytest.mark.parametrize(
    ("over", "fragment"),
    [
        ({"name": "Bad Name"}, "name 'Bad Name'"),
        ({"cpus": 0}, "cpus 0"),
        ({"memory_mib": 64}, "memory_mib 64"),
        ({"kernel": Path("rel/vmlinuz")}, "kernel 'rel/vmlinuz': must be an absolute path"),
        ({"channel_socket": Path("/" + "x" * 120)}, "too long for a unix socket"),
        ({"channel_name": "bad name"}, "channel_name 'bad name'"),
        ({"shares": (Share("bad tag!", Path("/a"), False),)}, "share tag 'bad tag!'"),
        (
            {"shares": (Share("t", Path("/a"), False), Share("t", Path("/b"), True))},
            "share tag 't': used twice",
        ),
        ({"shares": (Share("t", Path("rel"), False),)}, "must be absolute"),
        ({"cmdline": "quiet\ninit=/bin/sh"}, "cmdline: contains control characters"),
    ],
)
def test_each_problem_names_the_field(over, fragment):
    problems = spec(**over).problems()
    assert any(fragment in p for p in problems), problems


def test_validate_reports_every_problem_at_once():
    bad = spec(name="X", cpus=0, memory_mib=1)
    with pytest.raises(UsageError) as err:
        bad.validate()
    text = str(err.value)
    assert "name 'X'" in text and "cpus 0" in text and "memory_mib 1" in text
