"""neuralflow capture engine (needs torch): hooks, the picture math, and the pinned ring.

    from neuralflow.engine import Engine, render
    from neuralflow.engine import ProbeCallback   # training probes (imports transformers' Trainer)
"""

from neuralflow.engine.capture import Engine
from neuralflow.engine.layers import UnsupportedModel, decoder_layers, typical_scale
from neuralflow.engine.render import Picture, render

__all__ = ["Engine", "Picture", "ProbeCallback", "Prober", "UnsupportedModel", "decoder_layers",
           "render", "typical_scale"]


def __getattr__(name):
    # the probe module pulls in transformers.Trainer (seconds): load it only when asked for
    if name in ("ProbeCallback", "Prober"):
        from neuralflow.engine import probe
        return getattr(probe, name)
    raise AttributeError(f"module 'neuralflow.engine' has no attribute {name!r}")
