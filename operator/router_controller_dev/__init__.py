"""Development tooling for router-controller: never installed into the wheel or the image.

The runtime package ``router_controller`` holds only what runs in a cluster. What
``make run``, ``make cluster``, the tests and ``make bench`` need besides lives here,
once: the local control plane (:mod:`.envtest`), ``make run``'s runner
(:mod:`.devrun`), the stand-in routers (:mod:`.fakerouter`, :mod:`.hostile`), the
operator as a separate process (:mod:`.processes`), a real Prometheus
(:mod:`.prometheus`), test certificates (:mod:`.pki`), polling with a deadline
(:mod:`.waiting`) and where the repository is (:mod:`.repo`).

It is imported from a source checkout only (``operator/`` on ``PYTHONPATH``, as the
editable install, pytest and mypy arrange); ``pyproject.toml`` packages
``router_controller`` alone.
"""
