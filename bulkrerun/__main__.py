"""``python -m bulkrerun`` works the same as the ``bulkrerun`` command."""

from bulkrerun.cli import main

main()
