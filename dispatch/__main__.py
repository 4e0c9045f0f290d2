"""``python -m dispatch``: the ``dispatch`` command."""

from ._cli import main

main()
