"""minicodegen: Salesforce CodeGen in plain NumPy + Numba.

>>> import minicodegen
>>> model = minicodegen.load("tiny")                               # doctest: +SKIP
>>> minicodegen.generate(model, "def f():", max_new_tokens=16)     # doctest: +SKIP
"""

from .generation import generate, score, stream
from .model import Config, Model, forward, load, new_cache
from .tokenizer import Tokenizer

__all__ = ["Config", "Model", "Tokenizer", "forward", "generate", "load", "new_cache", "score", "stream"]
