"""Ship built worlds in the package: copy each into sau_compress/worlds/shipped-worlds/ and record its checksums.

For maintainers, after a change that alters a shipped world (its generator or training recipe):

    SAU_COMPRESS_CACHE=/tmp/fresh sau-compress toy build --force --json     # the default world
    python scripts/ship_world.py /tmp/fresh/toy/people40-seed0-<key>

then update the figures in README and docs/results.md; tests/test_shipped.py checks the files against
sau_compress/worlds/shipped-worlds/manifest.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sau_compress.worlds import ship_world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("worlds", nargs="+", type=Path, help="built world folders (named like their cache folders)")
    for src in parser.parse_args().worlds:
        entry = ship_world(src)
        print(json.dumps({"world": src.name, "weights_sha256": entry["weights_sha256"]}))


if __name__ == "__main__":
    main()
