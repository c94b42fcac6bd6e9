"""``python -m ddkit`` (and ``torchrun ... -m ddkit evaluate ...``): the ``ddkit`` command."""

from ddkit.cli import app

app()
