"""The control plane: what foreman says about itself, clarity before speed.

:mod:`.routes` is the Quart app for ``/healthz``, ``/readyz``, ``/metrics``, ``/jobs`` and
``/admin/api/*``; :mod:`.metrics` the Prometheus registry; :mod:`.responses` the JSON answer
helper; :mod:`.admin` the settings pages under ``/admin/``.
"""
