"""The harness as a pytest plugin: see fixtures/plugin.py."""
pytest_plugins = ["fixtures.plugin"]
