"""Shared fixtures. Every server here listens on 127.0.0.1 only: tests never reach the network."""
import os

# Before anything imports gradio: a test run must not phone home.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import pytest  # noqa: E402

from tests.image_server import ImageServer  # noqa: E402


@pytest.fixture(scope="session")
def image_server():
    """One loopback image server for the whole run; tests that count hits call reset() first."""
    with ImageServer() as server:
        yield server
