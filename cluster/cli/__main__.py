"""`python -m vsim.cluster.cli`: the `vsim` command (how `vsim up --detach` starts
the cluster in a process of its own)."""

import sys

from vsim.cluster.cli import main

sys.exit(main())
