"""`python -m convscope` runs the command line."""

from convscope.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
