#!/usr/bin/env python3
"""Launcher for a source checkout: ``python devices/runner.py info|bench|predict ...``.

The runner is the package ``devices/edgenas_device/``; devices get it as one file, ``runner.pyz``, built
by ``edgenas.device.app.build_runner_app``.  This file only keeps the old command working beside the
package (docs/runner.md).  Copied alone to a device it cannot work, and says so in the runner's contract.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

if __name__ == "__main__":
    if not os.path.isfile(os.path.join(HERE, "edgenas_device", "__main__.py")):
        sys.stdout.write('{"error": "runner.py is a launcher for devices/edgenas_device and cannot '
                         'run alone: push runner.pyz (edgenas.device.app builds it)", '
                         '"kind": "internal"}\n')
        sys.exit(1)
    sys.path.insert(0, HERE)
    from edgenas_device.__main__ import main

    sys.exit(main())
