"""Finding the cluster: in-cluster config or a kubeconfig, via kubernetes-asyncio's loader.

kubernetes-asyncio's config loader is the part of that library this operator uses:
it handles in-cluster service-account tokens (re-read as they rotate), kubeconfig
contexts, certificates inline or on disk, tokens and exec credential plugins. But
``import kubernetes_asyncio.config`` normally drags in ``kubernetes_asyncio.client``,
whose package imports some 850 generated API and model modules that this operator
never uses (it speaks raw JSON, see :mod:`router_controller.kube`) — about 25 MiB of
resident memory, a sixth of the operator's budget.

So the two packages are entered without running their ``__init__``: each is
registered as a namespace holding only what the loader needs (``Configuration``;
``ApiClient`` is referenced only by ``new_client_from_config``, which we never call).
If the full library was imported already (by a test, say), it is used as is. A unit
test checks that the generated modules stay out.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

_ROOT = "kubernetes_asyncio"
_CLIENT = "kubernetes_asyncio.client"


def _bare_package(name: str) -> types.ModuleType:
    """Register package ``name`` so its submodules import, without running its __init__."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name} is not installed")
    module = types.ModuleType(name)
    module.__path__ = list(spec.submodule_search_locations)
    module.__spec__ = spec
    sys.modules[name] = module
    return module


def _loader() -> tuple[Any, Any]:
    """(the kubernetes_asyncio.config module, the Configuration class)."""
    if _CLIENT not in sys.modules:
        if _ROOT not in sys.modules:
            _bare_package(_ROOT)
        client = _bare_package(_CLIENT)
        configuration = importlib.import_module(f"{_CLIENT}.configuration")
        client.Configuration = configuration.Configuration  # type: ignore[attr-defined]
        client.ApiClient = None  # type: ignore[attr-defined]
    config = importlib.import_module(f"{_ROOT}.config")
    return config, sys.modules[_CLIENT].Configuration


class ConfigError(Exception):
    """No usable cluster configuration: not in a Pod, and no loadable kubeconfig."""


async def load_configuration(kubeconfig: str | None) -> Any:
    """A kubernetes-asyncio ``Configuration`` for the cluster, as client-go finds it.

    Order: ``--kubeconfig``, then in-cluster, then ``$KUBECONFIG`` / ``~/.kube/config``.
    """
    config, configuration_class = _loader()
    configuration = configuration_class()
    try:
        if kubeconfig:
            await config.load_kube_config(
                config_file=kubeconfig, client_configuration=configuration
            )
            return configuration
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            await config.load_kube_config(client_configuration=configuration)
    except (config.ConfigException, OSError) as err:
        raise ConfigError(str(err)) from None
    return configuration
