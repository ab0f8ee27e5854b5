"""router-controller: StaticRoute resources in, the vLLM router's dynamic_config.json out.

The package is run as ``python -m router_controller`` or the ``router-controller``
console script; see :mod:`router_controller.cli`.
"""

__version__ = "0.1.0"
