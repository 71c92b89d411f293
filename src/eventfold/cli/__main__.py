"""``python -m eventfold.cli``: the same as the ``eventfold`` command."""

from eventfold.cli import main

if __name__ == "__main__":
    main()
