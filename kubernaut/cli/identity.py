"""Who the CLI calls as: a person's OIDC ID token (`--token-file`), a person's certificate
(`--cert NAME`, made by `kubernaut certs person NAME`), or, on the dev stack only, the shared
operator certificate."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from kubernaut.runtime.certs import person_cert_name
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.names import OPERATOR_ACCOUNT
from kubernaut.runtime.settings import RuntimeSettings


@dataclass(frozen=True)
class CliIdentity:
    token_file: Path | None = None
    # A person's name whose certificate (person-<name>.crt/.key in the certs dir) the
    # connection presents instead of the shared operator's.
    person_cert: str = ""

    def clients(self, settings: RuntimeSettings) -> Clients:
        account = person_cert_name(self.person_cert) if self.person_cert else OPERATOR_ACCOUNT
        return Clients(settings, account, token_file=self.token_file)


def add_identity_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--token-file",
        type=Path,
        help="a file holding your OIDC ID token: the calls are made as you (re-read on change)",
    )
    parser.add_argument(
        "--cert",
        metavar="NAME",
        default="",
        help="present your personal certificate (`kubernaut certs person NAME`)",
    )


def login_token_path(settings: RuntimeSettings) -> Path:
    """Where `kubernaut login` keeps the person's token."""
    return settings.state_dir / "token"


def identity_of(args: argparse.Namespace) -> CliIdentity:
    """The flags' identity; without either flag, the token `kubernaut login` saved, if
    there is one (else the dev stack's shared operator)."""
    token_file: Path | None = getattr(args, "token_file", None)
    person_cert: str = getattr(args, "cert", "") or ""
    if token_file is None and not person_cert:
        saved = login_token_path(RuntimeSettings())
        token_file = saved if saved.exists() else None
    return CliIdentity(token_file, person_cert)


# The dev stack's shared operator certificate, no token: what the CLI uses unless told.
SHARED_OPERATOR = CliIdentity()
