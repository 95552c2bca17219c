"""Run mlx-ttsi from a checkout without installing: `python cli.py ask ...`."""

from mlx_ttsi.cli import main

if __name__ == "__main__":
    main()
