"""neuralflow capture engine (needs torch): hooks, the picture math, and the pinned ring.

    from neuralflow.engine import Engine, render
"""

from neuralflow.engine.capture import Engine
from neuralflow.engine.layers import UnsupportedModel, decoder_layers
from neuralflow.engine.render import Picture, render

__all__ = ["Engine", "Picture", "UnsupportedModel", "decoder_layers", "render"]
