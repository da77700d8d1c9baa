"""The one place that reads the environment.

Every setting that an operator may change is read here through ``env`` so that
the full list of variables lives in one file (and in the README's table).
"""

from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

# A local, untracked ``.env`` file is honoured for development convenience;
# real deployments set variables in their process manager.
_dotenv = BASE_DIR / ".env"
if _dotenv.exists():
    environ.Env.read_env(str(_dotenv))
