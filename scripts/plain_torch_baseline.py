"""A plain PyTorch + torchvision training script, convlab's yardstick (docs/BENCHMARKS.md).

The script itself is src/convlab/app/baseline.py (shipped with the package, so `convlab bench` can
start it as its own process); it imports nothing of convlab but the model class. Read it there.
"""

from convlab.app.baseline import main

if __name__ == "__main__":
    main()
