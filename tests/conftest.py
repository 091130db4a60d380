"""Shared pytest configuration."""


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than 30 s (deselect with -m 'not slow')")
