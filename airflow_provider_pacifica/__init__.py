"""Apache Airflow provider for Pacifica Cartd.

Import the parts from their modules: ``hooks.cartd``, ``triggers.cartd``, ``sensors.cartd``,
``operators.download``; the Airflow-free domain code is in ``cloudevents`` and ``extraction``.
"""

from __future__ import annotations

__version__ = "0.1.0"
