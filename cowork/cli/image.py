"""``cowork image build [--force]`` and ``cowork image info``."""

from __future__ import annotations

import argparse
from typing import Any

from cowork.cli.common import event_bus, progress
from cowork.errors import ImageError
from cowork.host import image
from cowork.paths import Paths


def register(sub: Any) -> None:
    img = sub.add_parser(
        "image",
        help="build and check the guest image",
        description=(
            "The guest image (Debian, built from Debian packages with mmdebstrap) is built "
            "once per recipe and kept in your cache folder; every VM boots from a throw-away "
            "copy-on-write layer over it."
        ),
    )
    isub = img.add_subparsers(dest="image_command", metavar="ACTION")
    img.set_defaults(func=lambda _a: (img.print_help(), 2)[1])

    p = isub.add_parser("build", help="build the guest image (1-3 minutes, needs the mirror)")
    p.add_argument("--force", action="store_true", help="rebuild even if it is already built")
    p.set_defaults(func=cmd_build)

    p = isub.add_parser("info", help="where the image is, its size, and whether it verifies")
    p.set_defaults(func=cmd_info)

    p = isub.add_parser(
        "prune", help="delete images of old recipes (not one a VM or kept overlay still uses)"
    )
    p.set_defaults(func=cmd_prune)


def cmd_build(args: argparse.Namespace) -> int:
    paths = Paths()
    info = image.build(paths, force=args.force, progress=progress, bus=event_bus(paths))
    print(info.dir)
    return 0


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def cmd_info(_args: argparse.Namespace) -> int:
    paths = Paths()
    rhash = image.recipe_hash()
    directory = paths.image_dir(rhash)
    print(f"recipe hash:  {rhash}")
    print(f"path:         {directory}")
    try:
        info = image.load(directory)
    except ImageError as err:
        print(f"status:       not built ({err})")
        return 1
    print(f"built at:     {info.built_at}")
    if info.kernel_version:
        print(f"kernel:       {info.kernel_version}")
    print(f"cmdline:      {info.kernel_cmdline}")
    for path in (info.kernel, info.initrd, info.base_disk):
        try:
            size = _mib(path.stat().st_size)
        except OSError:
            size = "missing"
        print(f"  {path.name:<12} {size}")
    print(f"total:        {_mib(info.size_bytes)}")
    try:
        image.verify(info)
    except ImageError as err:
        print(f"verified:     NO - {err}")
        return 1
    print("verified:     ok (sha256 of every file matches the manifest)")
    return 0


def cmd_prune(_args: argparse.Namespace) -> int:
    from cowork.host import doctor

    result = doctor.prune_images(Paths())
    for path in result.removed:
        print(f"deleted {path}")
    for recipe in result.kept_in_use:
        print(f"kept {recipe[:16]}… (a VM or a kept overlay still uses it)")
    print(f"freed {_mib(result.freed)}")
    return 0
