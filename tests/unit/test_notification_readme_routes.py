"""The README's routing example is a routing file the service takes: every channel type
in it builds (its credentials from files), and the routes name only its channels."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from kubernaut.services.notification.routing import VENDOR_TYPES, load_routing
from kubernaut.services.notification.settings import NotificationSettings

README = Path(__file__).resolve().parents[2] / "README.md"
# Credentials of the right shape, by the example's file name.
_SECRETS = {
    "bot-token": "xoxb-1234-5678-abcdefghijklmnop",
    "webhook-url": "https://example.webhook.office.com/webhookb2/abc",
    "routing-key": "R0123456789ABCDEF0123456789ABCDE",
    "secret": "whsec-0123456789abcdef",
}


def test_the_readme_routing_example_loads_with_every_channel_type(tmp_path: Path) -> None:
    text = README.read_text()
    section = text[text.index("## Notifications: channels and routes") :]
    example = re.search(r"```yaml\n(channels:.*?)```", section, re.S)
    assert example is not None, "the README has no routing example"
    routes = example.group(1)
    # The mounted Secrets of the example, as files here.
    for secret in sorted(set(re.findall(r"/secrets/[\w/.-]+", routes))):
        path = tmp_path / secret.strip("/").replace("/", "_")
        path.write_text(f"{_SECRETS.get(secret.rsplit('/', 1)[1], 's3cret')}\n")
        routes = routes.replace(secret, str(path))
    file = tmp_path / "routes.yaml"
    file.write_text(routes)
    router = load_routing(file, httpx.AsyncClient(), NotificationSettings())
    kinds = {channel.kind for channel in router.channels.values()}
    assert kinds == set(VENDOR_TYPES), kinds
    assert len(router.describe()) == 5
