"""The fxpress IR: a captured ATen-level torch.fx graph plus typed annotations.

`capture` turns an `nn.Module` into a `Graph`; `print_graph` gives the stable
text form used by golden tests; `verify` checks that a graph is well formed.
"""

from fxpress.ir.capture import capture
from fxpress.ir.graph import Graph
from fxpress.ir.printer import print_graph
from fxpress.ir.verify import verify

__all__ = ["Graph", "capture", "print_graph", "verify"]
