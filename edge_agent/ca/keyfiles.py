"""Private key files: created 0600 inside a 0700 directory, written atomically, and refused on
read when anyone but the owner could have read them.

A key file is never written in place: the bytes go to a fresh temporary file (O_EXCL, mode
0600 from the first instant), are fsynced, renamed over the target and the directory is
fsynced, so a crash leaves the old key or the new one, never half of either. Reading opens
with O_NOFOLLOW and checks the opened file itself (fstat), so a symlink or a swapped file
cannot smuggle in another key. Keys are stored as unencrypted PKCS#8 PEM: a gateway boots
unattended and has nobody to type a passphrase, so the file permissions are the protection.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644


class KeyFileError(PermissionError):
    """A key file or its directory is missing, unsafe or unreadable. The text says what to do."""


def _check_owner_only(path: Path, st: os.stat_result, what: str, mode: int) -> None:
    if st.st_uid != os.geteuid():
        raise KeyFileError(f"{path}: {what} belongs to uid {st.st_uid}, not to this user "
                           f"({os.geteuid()}); refusing to trust it")
    loose = stat.S_IMODE(st.st_mode) & 0o077
    if loose:
        raise KeyFileError(
            f"{path}: {what} has mode {stat.S_IMODE(st.st_mode):04o}, readable or writable by "
            f"group or others; run `chmod {mode:o} {path}` and, if other users could log in, "
            "treat the key as compromised")


def ensure_private_dir(path: str | os.PathLike[str]) -> Path:
    """Create `path` with mode 0700 (parents as needed), or check an existing one is 0700-safe."""
    directory = Path(path)
    try:
        directory.mkdir(mode=PRIVATE_DIR_MODE, parents=True)
        os.chmod(directory, PRIVATE_DIR_MODE)  # mkdir's mode is filtered by the umask
    except FileExistsError:
        pass
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise KeyFileError(f"{directory}: not a directory (a symlink or a file)")
    _check_owner_only(directory, st, "the key directory", PRIVATE_DIR_MODE)
    return directory


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes, mode: int, replace: bool) -> None:
    if not replace and os.path.lexists(path):
        raise KeyFileError(f"{path}: already exists; refusing to overwrite a key (remove or "
                           "retire it deliberately first)")
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_private(path: str | os.PathLike[str], data: bytes, *, replace: bool = False) -> Path:
    """Write secret bytes atomically as a 0600 file inside a 0700 directory."""
    target = Path(path)
    ensure_private_dir(target.parent)
    _atomic_write(target, bytes(data), PRIVATE_FILE_MODE, replace)
    return target


def write_public(path: str | os.PathLike[str], data: bytes, *, replace: bool = True) -> Path:
    """Write public material (certificates, CRLs, configuration) atomically, mode 0644."""
    target = Path(path)
    _atomic_write(target, bytes(data), PUBLIC_FILE_MODE, replace)
    return target


def read_private(path: str | os.PathLike[str]) -> bytes:
    """Read a private key file, refusing symlinks, foreign owners and loose permissions on the
    file or its directory."""
    target = Path(path)
    parent_st = os.stat(target.parent)
    _check_owner_only(target.parent, parent_st, "the key directory", PRIVATE_DIR_MODE)
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise KeyFileError(f"{target}: no such key file") from None
    except OSError as exc:
        raise KeyFileError(f"{target}: cannot open the key file safely ({exc.strerror}); "
                           "a symlink is not accepted") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{target}: not a regular file")
        _check_owner_only(target, st, "the key file", PRIVATE_FILE_MODE)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def remove_private(path: str | os.PathLike[str]) -> None:
    """Destroy a key file: overwrite with zeros, fsync, unlink, fsync the directory.
    On flash storage the overwrite is best effort (wear levelling may keep old blocks);
    docs/keys-and-certificates.md says what that means for destruction records."""
    target = Path(path)
    read_private(target)  # the same safety checks: never zero a file we would not trust
    fd = os.open(target, os.O_WRONLY | os.O_NOFOLLOW)
    try:
        size = os.fstat(fd).st_size
        os.write(fd, bytes(size))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.unlink(target)
    _fsync_dir(target.parent)


# -- key encodings ----------------------------------------------------------------------------


def private_key_pem(key: PrivateKeyTypes) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def save_private_key(path: str | os.PathLike[str], key: PrivateKeyTypes, *,
                     replace: bool = False) -> Path:
    return write_private(path, private_key_pem(key), replace=replace)


def load_private_key(path: str | os.PathLike[str]) -> PrivateKeyTypes:
    data = read_private(path)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not an unencrypted PKCS#8 PEM private key ({exc})") from None


def save_ed25519_seed(path: str | os.PathLike[str], seed: bytes, *,
                      replace: bool = False) -> Path:
    """An Ed25519 seed (what protocol.crypto signs with) as a PKCS#8 PEM file."""
    return save_private_key(path, ed25519.Ed25519PrivateKey.from_private_bytes(seed),
                            replace=replace)


def save_x25519_private(path: str | os.PathLike[str], private: bytes, *,
                        replace: bool = False) -> Path:
    return save_private_key(path, x25519.X25519PrivateKey.from_private_bytes(private),
                            replace=replace)


def _raw_private(path: str | os.PathLike[str], kind: type) -> bytes:
    key = load_private_key(path)
    if not isinstance(key, kind):
        raise KeyFileError(f"{path}: holds a {type(key).__name__}, not a {kind.__name__}")
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def load_ed25519_seed(path: str | os.PathLike[str]) -> bytes:
    return _raw_private(path, ed25519.Ed25519PrivateKey)


def load_x25519_private(path: str | os.PathLike[str]) -> bytes:
    return _raw_private(path, x25519.X25519PrivateKey)


def load_ec_key(path: str | os.PathLike[str]) -> ec.EllipticCurvePrivateKey:
    key = load_private_key(path)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyFileError(f"{path}: holds a {type(key).__name__}, not an EC private key")
    return key
