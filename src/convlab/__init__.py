"""convlab: a config-driven experiment runner for convolutional networks.

From Python: `convlab.train("model=hdc", "epochs=3")` returns the run's summary, `convlab.load(run)`
its trained model (convlab.app.api; imported on first use, so `import convlab` stays light).
"""

from typing import Any

from convlab.app import __version__

__all__ = ["train", "load", "LoadedRun", "__version__"]
_API = ("train", "load", "LoadedRun")


def __getattr__(name: str) -> Any:
    """convlab.train, convlab.load and convlab.LoadedRun, from convlab.app.api."""
    if name in _API:
        from convlab.app import api

        return getattr(api, name)
    raise AttributeError(f"module 'convlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names, for tab completion."""
    return sorted([*globals(), *_API])
