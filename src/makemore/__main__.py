"""`python -m makemore ...` (what torchrun launches) is the same as the `makemore` command."""

from makemore.cli import main

if __name__ == "__main__":
    main()
