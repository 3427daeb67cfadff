#!/usr/bin/env python
"""Prepare a benchmark from its official download.

    python scripts/prepare_data.py {voc,context,coco_stuff,coco_object,cityscapes,ade20k} \
        --src <extracted official download> --dst <dataset root> [--download]

See the Datasets section of README.md.  The logic lives in ``datamodules.prepare``.
"""

import sys
from pathlib import Path

# Allow running from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datamodules.prepare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
