"""``python -m harness.accuracy``: the accuracy script (harness/accuracy/cli.py)."""
import sys

from harness.accuracy.cli import main

sys.exit(main())
