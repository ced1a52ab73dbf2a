"""`python -m convlab ...` is the same as the `convlab` console script."""

from convlab.cli import main

main()
