"""``python -m andon`` is the ``andon`` command."""

from andon.cli import main

main()
