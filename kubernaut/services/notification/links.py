"""URLs that come from an alert, as a notification shows them.

An alert's annotations (runbook_url, summary, description) and its generator URL are
written by whoever could send the alert, so a link in them is not ours to vouch for. A URL
is shown as a link only when it is plain http(s) to a host on the operator's allow-list
(`KUBERNAUT_NOTIFICATION_LINK_HOSTS`); any other is defanged ("hxxps://evil[.]example/x"):
readable, but nothing a mail client turns into a link.

The check is strict on purpose: a URL that two parsers could read differently (userinfo,
backslashes, non-ASCII or percent-encoded host names) is never a link.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

__all__ = [
    "LINK_HOSTS_SETTING",
    "LinkPolicy",
    "ShownUrl",
    "check_host_pattern",
    "defang",
]

LINK_HOSTS_SETTING: Final = "KUBERNAUT_NOTIFICATION_LINK_HOSTS"

_SCHEMES: Final = frozenset({"http", "https"})
# Printable ASCII without space, backslash, quotes, angle brackets and the other characters
# RFC 3986 never allows: anything else is read differently by different parsers.
_STRICT_URL: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[!#$%&()*+,\-./0-9:;=?@A-Z\[\]_a-z~]+")
_LABEL: Final = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOST_NAME: Final = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# What a mail client may take for the dot of a domain name (IDNA maps the last three to ".").
_DOTS: Final = re.compile(r"[.\u3002\uff0e\uff61]")
# URLs inside free text (summary, description, label values): anything with a scheme, and
# the www. form clients link without one.
_URL_IN_TEXT: Final = re.compile(
    r"(?i)\b(?:[a-z][a-z0-9+.-]*://|(?:javascript|vbscript|data|mailto|file):|"
    r"www[.\u3002\uff0e\uff61])[^\s<>\"']+"
)


def check_host_pattern(pattern: str) -> str:
    """`pattern` normalised ("Runbooks.Example.com." -> "runbooks.example.com"); raises
    ValueError unless it is a host name, an IP address, or "*." and a host name."""
    text = pattern.strip().lower().rstrip(".")
    name = text.removeprefix("*.")
    if _HOST_NAME.fullmatch(name) is None and not _is_ip(name):
        raise ValueError(
            f"{LINK_HOSTS_SETTING}: not a host name, IP address or *.domain: {pattern!r}"
        )
    if name != text and _is_ip(name):
        raise ValueError(f"{LINK_HOSTS_SETTING}: *. does not apply to an IP address: {pattern!r}")
    return text


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def defang(url: str) -> str:
    """`url` as text no mail client links: the scheme's "tt" and ":" broken ("hxxps://",
    "javascript[:]"), every dot and "@" bracketed."""
    scheme, sep, rest = url.partition(":")
    if sep and re.fullmatch(r"(?i)[a-z][a-z0-9+.-]*", scheme):
        if scheme.lower() in _SCHEMES:
            head = re.sub("(?i)tt", "xx", scheme, count=1) + ":"
        else:
            head = scheme + "[:]"
        text = head + rest
    else:
        text = url
    return _DOTS.sub("[.]", text).replace("@", "[@]")


@dataclass(frozen=True, slots=True)
class ShownUrl:
    """How one URL from an alert is shown: `text` is the URL itself when it may be a link,
    else its defanged form, and `why_not` says why it is not a link."""

    text: str
    is_link: bool
    why_not: str = ""


class LinkPolicy:
    """Which URLs from an alert are shown as links: plain http(s) URLs whose host is on
    the allow-list ("host" exactly, "*.domain" any subdomain of domain, not domain itself).
    An empty list allows none."""

    def __init__(self, hosts: Iterable[str] = ()) -> None:
        patterns = [check_host_pattern(h) for h in hosts if h.strip()]
        self._exact = frozenset(p for p in patterns if not p.startswith("*."))
        self._suffixes = tuple(p[1:] for p in patterns if p.startswith("*."))

    def allows_host(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return host in self._exact or any(
            host.endswith(suffix) and len(host) > len(suffix) for suffix in self._suffixes
        )

    def show(self, url: str) -> ShownUrl:
        """`url` (already stripped of control characters) as it is to be shown."""
        why_not = self._why_not(url)
        if not why_not:
            return ShownUrl(text=url, is_link=True)
        return ShownUrl(text=defang(url), is_link=False, why_not=why_not)

    def _why_not(self, url: str) -> str:
        """Empty when `url` may be a link, else the reason it may not."""
        scheme = url.partition(":")[0].lower()
        if scheme not in _SCHEMES:
            return "only http and https URLs are links"
        if _STRICT_URL.fullmatch(url) is None:
            return "it has characters a URL should not have"
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a malformed port
        except ValueError:
            return "it is not a well-formed URL"
        if "@" in parts.netloc:
            # https://good.example@evil.example/ goes to evil.example.
            return "it carries a user name, a way to disguise its host"
        host = (parts.hostname or "").rstrip(".")
        if not host:
            return "it has no host"
        if _HOST_NAME.fullmatch(host) is None and not _is_ip(host.strip("[]")):
            return "its host is not a plain host name"
        if not self.allows_host(host.strip("[]")):
            return f"host not on {LINK_HOSTS_SETTING}"
        return ""

    def defang_text(self, text: str) -> tuple[str, bool]:
        """`text` with every URL in it that may not be a link defanged, and whether any
        was."""
        changed = False

        def replace(match: re.Match[str]) -> str:
            nonlocal changed
            url = match.group()
            # Sentence punctuation after a URL is not part of it.
            stripped = url.rstrip(".,;:!?)]}")
            tail = url[len(stripped) :]
            # A client links www.example.com as http://www.example.com.
            bare = stripped.lower().startswith("www")
            if not self._why_not("http://" + stripped if bare else stripped):
                return url
            changed = True
            return defang(stripped) + tail

        return _URL_IN_TEXT.sub(replace, text), changed
