"""Where the tests find the repository (ROOT) and the optional development folder beside it (SHARED)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
