"""`python -m mdream ...` is the `mdream` command (for environments where the entry point is not on PATH)."""

from mdream.cli import main

if __name__ == "__main__":
    main()
