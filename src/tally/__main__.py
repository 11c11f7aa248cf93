"""``python -m tally ...``: the same CLI as the ``tally`` command."""

from tally.cli.main import main

main()
