"""neuralflow viewer side (torch-free): the frame type, the wire, sockets, palettes, the window.

    from neuralflow.viewer import Subscriber, colorize
"""

from neuralflow.viewer.frame import Frame
from neuralflow.viewer.palette import colorize
from neuralflow.viewer.stream import Publisher, Subscriber
from neuralflow.viewer.wire import WireError, decode, encode

__all__ = ["Frame", "Publisher", "Subscriber", "WireError", "colorize", "decode", "encode"]
