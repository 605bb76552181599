"""dataset_checks: data-quality tests for face-recognition datasets.

The core (rules, discovery, loading, search, findings) never imports pytest;
`dataset_checks.plugin` adapts it to pytest.
"""

__version__ = "0.1.0"
