"""A small user dataset on disk (images, label maps, optional split file), shared by the datamodule and CLI tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.synthetic import random_image, voc_palette


def write_dataset(root: Path, n=3, sixteen=False, palette=False, values=(0, 1, 2, 255), split=None):
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    (root / "ann").mkdir()
    ids = [f"s{i}" for i in range(n)]
    for i, sid in enumerate(ids):
        h, w = 20 + i, 30
        Image.fromarray(random_image(h, w, rng)).save(root / "img" / f"{sid}.jpg")
        lab = rng.choice(np.asarray(values), size=(h, w))
        lab.reshape(-1)[: len(values)] = values
        if sixteen:
            Image.fromarray(lab.astype(np.uint16)).save(root / "ann" / f"{sid}_gt.tif")
        else:
            im = Image.fromarray(lab.astype(np.uint8))
            if palette:
                im = im.convert("P")
                im.putpalette(voc_palette())
            im.save(root / "ann" / f"{sid}_gt.png")
    if split:
        (root / "val.txt").write_text("".join(f"{s}\n" for s in split))
    return ids
