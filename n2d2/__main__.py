"""`python -m n2d2` and the `n2d2` console script: see `n2d2.cli`."""
import sys

from n2d2.cli import main as cli_main


def main() -> int:
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
