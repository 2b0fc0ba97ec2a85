"""``python -m pathseg.cli ...`` (how torchrun starts the command line)."""

from pathseg.cli import main

if __name__ == "__main__":
    main()
