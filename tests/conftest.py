"""Make the shared test helpers (checkpoint_writers, ...) importable from every test folder."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
