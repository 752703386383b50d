"""CURVE key files, as `zmq.auth.create_certificates` (and `supervise keygen`) write them.

A key pair is two files: `NAME.key` holds the public key only and may be handed
out; `NAME.key_secret` holds the public and the secret key and must stay private
(mode 0600). Keys are Z85 text, 40 characters each.

Shared by the supervisor (its own key pair, its allow-lists of client public
keys) and by clients (their key pair, the supervisor's public key). Clients use
CURVE only over `tcp://`: an `ipc://` socket is protected by file permissions.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ClientKeys",
    "KeyFileError",
    "apply_client_keys",
    "load_client_keys",
    "read_key_directory",
    "read_key_pair",
    "read_public_key",
]

Z85_CHARS = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")
KEY_LENGTH = 40  # a 32-byte key in Z85


class KeyFileError(ValueError):
    """A key file that cannot be used; the message names the file and what to do."""


def _valid(key: bytes | None) -> bool:
    return key is not None and len(key) == KEY_LENGTH and all(c in Z85_CHARS for c in key)


def _load(path: Path) -> tuple[bytes, bytes | None]:
    from zmq.auth import load_certificate

    if not path.is_file():
        raise KeyFileError(f"CURVE key file {path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        public, secret = load_certificate(path)
    except OSError as exc:
        raise KeyFileError(f"cannot read CURVE key file {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise KeyFileError(
            f"{path} is not a CURVE key file (no public-key line; create one with supervise keygen)"
        ) from None
    if not _valid(public) or (secret is not None and not _valid(secret)):
        raise KeyFileError(f"{path}: a CURVE key must be {KEY_LENGTH} Z85 characters")
    return public, secret


def read_public_key(path: str | os.PathLike[str]) -> bytes:
    """The Z85 public key in `path` (a `NAME.key`, or a `NAME.key_secret`: its public half)."""
    return _load(Path(path))[0]


def read_key_pair(path: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """(public, secret) from a `NAME.key_secret` file, which must be private to its owner.

    Raises:
        KeyFileError: missing, unreadable, not a key file, no secret key in it
            (a public `NAME.key` was given), or readable by group or others.
    """
    file = Path(path)
    public, secret = _load(file)
    if secret is None:
        raise KeyFileError(f"{file} holds no secret key (give the NAME.key_secret file, not the public NAME.key)")
    mode = stat.S_IMODE(file.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"{file} is accessible to group or others (mode {mode:o}); a secret key must be private: chmod 600 {file}"
        )
    return public, secret


@dataclass(frozen=True, slots=True)
class ClientKeys:
    """A client's CURVE key pair and the supervisor's public key, Z85."""

    public: bytes
    secret: bytes
    server: bytes

    def __repr__(self) -> str:  # never print a secret key
        return f"ClientKeys(public={self.public.decode()!r}, server={self.server.decode()!r})"


def load_client_keys(curve_key: str | os.PathLike[str], server_key: str | os.PathLike[str]) -> ClientKeys:
    """Read a client's secret key file and the supervisor's public key file."""
    public, secret = read_key_pair(curve_key)
    return ClientKeys(public, secret, read_public_key(server_key))


def apply_client_keys(sock: Any, keys: ClientKeys) -> None:
    """Make `sock` (before `connect`) a CURVE client of the supervisor with `keys.server`."""
    import zmq

    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server)


def read_key_directory(directory: Path) -> dict[bytes, str]:
    """The public keys of the `*.key` files in `directory` (as `zmq.auth.load_certificates`): Z85 key -> file stem."""
    if not directory.is_dir():
        raise KeyFileError(
            f"directory {directory} does not exist" if not directory.exists() else f"{directory} is not a directory"
        )
    keys: dict[bytes, str] = {}
    for path in sorted(directory.glob("*.key")):
        keys.setdefault(read_public_key(path), path.stem)
    return keys
