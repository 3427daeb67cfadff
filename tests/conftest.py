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

os.environ.setdefault("PROXYCLIP_CACHE", tempfile.mkdtemp(prefix="proxyclip_test_cache_"))
