"""Tests run in quick mode: the notebooks collected by nbval inherit this environment."""
import os

os.environ.setdefault("RANEM_MODE", "quick")
