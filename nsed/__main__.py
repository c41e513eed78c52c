"""``python -m nsed``: the same command line as ``nsed``."""

from nsed.cli import main

if __name__ == "__main__":
    main()
