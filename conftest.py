# Root conftest of the dataset_checks project.
# The plugin itself is registered once, through the `pytest11` entry point in pyproject.toml;
# registering it here as well would fail with "Plugin already registered".
pytest_plugins = ["pytester"]

collect_ignore = ["benchmarks", "reports"]
