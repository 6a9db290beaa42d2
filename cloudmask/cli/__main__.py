"""``python -m cloudmask.cli``: the ``cloudmask`` command."""

from . import main

if __name__ == "__main__":  # pragma: no cover
    main()
