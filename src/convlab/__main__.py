"""`python -m convlab ...` is the same as the `convlab` console script."""

from convlab.app.cli import main

main()
