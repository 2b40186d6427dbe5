"""Time the content layer adds per tool result from an outside origin, as JSON.

"clean": ordinary text (with some non-ASCII); "dirty": about 2% of words carry invisible
characters or comments, and delimiter imitations are frequent (an adversarial page).

Usage: python bench/bench_content.py [repeats]
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time

from cowork.host.agent.content import ContentLayer, Origin, Provenance

SIZES = {"1KB": 1024, "100KB": 100 * 1024, "1MB": 1024 * 1024}


def sample(size: int, dirty: bool) -> str:
    rng = random.Random(size)
    words = ["lorem", "ipsum", "dolor", "sit", "amet", "café", "data"]
    if dirty:  # adversarial: delimiter imitations everywhere
        words.append("<<end-outside-data>>")
    parts: list[str] = []
    n = 0
    while n < size:
        w = rng.choice(words)
        if dirty and rng.random() < 0.02:
            w += rng.choice(["\u200b", "\u202e", "\U000e0041", "<!-- x -->"])
        parts.append(w)
        n += len(w) + 1
    return " ".join(parts)[:size]


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    layer = ContentLayer()
    prov = Provenance(Origin.WEB, "example.test")
    out: dict[str, object] = {"repeats": repeats}
    for name, size in SIZES.items():
        for dirty in (False, True):
            text = sample(size, dirty)
            times = []
            for _ in range(repeats if size < 1_000_000 else max(20, repeats // 10)):
                t0 = time.perf_counter()
                layer.process(text, prov)
                times.append(time.perf_counter() - t0)
            times.sort()
            out[f"{name}{'-dirty' if dirty else '-clean'}"] = {
                "median_ms": round(statistics.median(times) * 1000, 3),
                "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))] * 1000, 3),
                "runs": len(times),
            }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
