"""minicodegen: Salesforce CodeGen in plain NumPy + Numba.

>>> import minicodegen
>>> model = minicodegen.load("path/to/checkpoint")        # doctest: +SKIP
>>> minicodegen.generate(model, [4299, 277, 33529])       # doctest: +SKIP
"""

from .generate import generate
from .model import Config, Model, forward, load, new_cache

__all__ = ["Config", "Model", "forward", "generate", "load", "new_cache"]
