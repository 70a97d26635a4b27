"""``python -m foreman`` is the ``foreman`` command."""

from .cli import main

main()
