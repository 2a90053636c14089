"""``python -m qsl.synthetic``: write a synthetic COCO-format data set (see qsl/synthetic/dataset.py)."""
import sys

from qsl.synthetic.dataset import main

sys.exit(main())
