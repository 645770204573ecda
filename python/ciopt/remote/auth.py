"""CurveZMQ keys and the scheduler's allowlist.

`ciopt keygen DIR` writes NAME.key (public) and NAME.key_secret (public + secret) in ZeroMQ's
certificate format, readable by zmq.auth.load_certificate and by every other ZeroMQ binding.
The scheduler runs with its secret file and an allowlist directory of public `.key` files; a
peer whose key is not in the directory fails the CURVE handshake (ZAP answers 400) and the
refusal is logged with the key, so an operator sees who knocked. Adding a file to the
directory admits that key without a restart: an unknown key makes the directory be read again
before the peer is refused.
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from ciopt.errors import UserError

log = logging.getLogger("ciopt.remote.auth")

ENV_SECRET = "CIOPT_CURVE_SECRET"  # a client's or executor's .key_secret file
ENV_SERVER_KEY = "CIOPT_SERVER_KEY"  # the scheduler's public .key file


class KeyFileError(UserError):
    """A key file is missing, unreadable or not a CURVE certificate."""


@dataclass(frozen=True)
class KeyPair:
    public: bytes  # z85, 40 bytes
    secret: bytes | None  # z85, 40 bytes; None for a public-only certificate


@dataclass(frozen=True)
class ClientSecurity:
    """What a DEALER needs to talk CURVE to the scheduler."""

    keys: KeyPair
    server_public: bytes

    @classmethod
    def from_files(cls, secret_file: str | os.PathLike[str], server_key_file: str | os.PathLike[str]
                   ) -> ClientSecurity:
        keys = load_keypair(secret_file, need_secret=True)
        return cls(keys, load_keypair(server_key_file).public)

    @classmethod
    def from_env(cls, env: dict[str, str] | os._Environ[str] = os.environ) -> ClientSecurity | None:
        secret, server = env.get(ENV_SECRET), env.get(ENV_SERVER_KEY)
        if not secret and not server:
            return None
        if not (secret and server):
            raise KeyFileError(f"CurveZMQ needs both {ENV_SECRET} and {ENV_SERVER_KEY}")
        return cls.from_files(secret, server)

    def apply(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.keys.secret
        sock.curve_publickey = self.keys.public
        sock.curve_serverkey = self.server_public


_SECRET_BANNER = ("#   ****  Generated on {0} by ciopt keygen  ****\n"
                  "#   ZeroMQ CURVE **Secret** Certificate\n"
                  "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n\n")
_PUBLIC_BANNER = ("#   ****  Generated on {0} by ciopt keygen  ****\n"
                  "#   ZeroMQ CURVE Public Certificate\n"
                  "#   Copy it into the scheduler's --allow directory to admit its owner.\n\n")


def _write_cert(path: Path, banner: str, public: bytes, secret: bytes | None, mode: int) -> None:
    body = banner.format(datetime.datetime.now().isoformat(timespec="seconds"))
    body += "metadata\ncurve\n" + f'    public-key = "{public.decode()}"\n'
    if secret is not None:
        body += f'    secret-key = "{secret.decode()}"\n'
    # Created with its final mode: a secret key must never be world-readable, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(body)
    os.chmod(path, mode)


def keygen(directory: str | os.PathLike[str], name: str, force: bool = False) -> tuple[Path, Path]:
    """A new key pair: (DIR/NAME.key, DIR/NAME.key_secret). Refuses to overwrite unless `force`."""
    if not name or "/" in name or name.startswith("."):
        raise KeyFileError(f"key name {name!r} must be a plain file name")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    public_file, secret_file = d / f"{name}.key", d / f"{name}.key_secret"
    for f in (public_file, secret_file):
        if f.exists() and not force:
            raise KeyFileError(f"{f} exists; pass --force to replace it")
    public, secret = zmq.curve_keypair()
    _write_cert(public_file, _PUBLIC_BANNER, public, None, 0o644)
    _write_cert(secret_file, _SECRET_BANNER, public, secret, 0o600)
    return public_file, secret_file


def load_keypair(path: str | os.PathLike[str], need_secret: bool = False) -> KeyPair:
    p = Path(path)
    try:
        public, secret = zmq.auth.load_certificate(p)
    except (OSError, ValueError) as e:
        raise KeyFileError(f"{p}: not a readable CurveZMQ certificate ({e})") from None
    if not public or len(public) != 40 or (need_secret and (not secret or len(secret) != 40)):
        what = "secret" if need_secret else "public"
        raise KeyFileError(f"{p}: no CurveZMQ {what} key in it (use the .key_secret file `ciopt keygen` wrote)")
    return KeyPair(public, secret or None)


class Allowlist:
    """The public keys in a directory; the CURVE callback of the scheduler's authenticator."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise KeyFileError(f"--allow {self.directory}: not a directory of public .key files")
        self._lock = threading.Lock()
        self.keys = self._read()
        self.refused = 0

    def _read(self) -> set[bytes]:
        keys = set()
        for f in sorted(self.directory.glob("*.key")):
            try:
                keys.add(load_keypair(f).public)
            except KeyFileError as e:
                log.warning("allowlist: skipping %s", e)
        return keys

    def callback(self, domain: str, key: bytes) -> bool:
        with self._lock:
            if key in self.keys:
                return True
            self.keys = self._read()  # a key file may have been added since
            if key in self.keys:
                return True
            self.refused += 1
        log.warning("refused a connection with CURVE key %s: not in the allowlist %s",
                    key.decode(errors="replace"), self.directory)
        return False


def start_authenticator(ctx: zmq.Context, allow_dir: str | os.PathLike[str]) -> tuple[ThreadAuthenticator, Allowlist]:
    allowlist = Allowlist(allow_dir)
    auth = ThreadAuthenticator(ctx, log=logging.getLogger("ciopt.remote.zap"))
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=allowlist)
    return auth, allowlist


def apply_server(sock: zmq.Socket, keys: KeyPair) -> None:
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_server = True


__all__ = ["Allowlist", "ClientSecurity", "ENV_SECRET", "ENV_SERVER_KEY", "KeyFileError", "KeyPair", "apply_server",
           "keygen", "load_keypair", "start_authenticator"]
