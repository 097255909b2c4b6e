import pytest

from tests.conftest import TEST_KEY
from tests.helpers import digit_images, embedded_service


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One live `finetune serve` (SQLite, embedded worker) for the client tests: its URL."""
    tmp = tmp_path_factory.mktemp("server")
    # Webhooks to the tests' loopback receivers are allowed on this server.
    with embedded_service(tmp, TEST_KEY, FINETUNE_WEBHOOK_ALLOW_PRIVATE="true") as client:
        yield str(client.base_url).rstrip("/")


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory):
    """A folder of class folders of digit PNGs: digit_<k>/<n>.png, 3 classes x 16."""
    root = tmp_path_factory.mktemp("digits") / "digits"
    for i, (label, img) in enumerate(digit_images(per_class=16, size=32, classes=3)):
        folder = root / f"digit_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"{i:04d}.png")
    return root
