import os
import sys
from pathlib import Path

# Evaluation code must never touch the network (albumentations checks PyPI on import).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# Make the helper modules in tests/ (tiny_models.py) importable as plain modules.
sys.path.insert(0, str(Path(__file__).resolve().parent))
# Model weights come from local files or seeded random init only: a test must never download.
os.environ["HF_HUB_OFFLINE"] = "1"
# Text-embedding cache of the tests lives in a throw-away folder, not in the user's home.
import tempfile  # noqa: E402

import pytest  # noqa: E402

os.environ.setdefault("PROXYCLIP_CACHE", tempfile.mkdtemp(prefix="proxyclip_test_cache_"))


@pytest.fixture(scope="session")
def towers(tmp_path_factory) -> dict[str, str]:
    """The tiny towers as build options (``build_segmenters(method, jobs, **towers)``): the shipped-shape tiny CLIP
    and DINO configs with seeded random weights and a throw-away text cache, shared by the whole session."""
    from tiny_models import write_tiny_clip_config, write_tiny_sam_spec, write_tiny_vfm_spec

    d = tmp_path_factory.mktemp("towers")
    return {"clip": str(write_tiny_clip_config(d)), "clip_weights": "random", "text_cache_dir": str(d / "cache"),
            "vfm": str(write_tiny_vfm_spec(d)), "vfm_weights": "random",
            # Trident's SAM and CorrCLIP's masks (no masks: one region); unused by the other methods
            "sam": str(write_tiny_sam_spec(d)), "sam_weights": "random", "masks": "none"}
