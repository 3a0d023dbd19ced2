"""The gateway's key files across a renewal (keys/ is 0700, every file 0600).

    keys/gateway-signing.key, gateway-agreement.key, broker-client.key   in use
    keys/pending/<same names>      generated for a renewal, waiting for the certificates
    keys/retired/<kid>.key         retired, waiting for destruction (edge_agent.reseal.keeper)

`swap_in_pending` moves the keys in use to retired/ and the pending ones into use with
renames inside one file system (each atomic), fsyncing the directories; if a rename fails,
the ones already done are undone, so the gateway never ends up with half a generation.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from edge_agent.ca import keyfiles

PENDING_DIR = "pending"
RETIRED_DIR = "retired"


def pending_dir(keys_dir: Path) -> Path:
    return keyfiles.ensure_private_dir(keys_dir / PENDING_DIR)


def swap_in_pending(keys_dir: Path, current_kids: Mapping[str, str]) -> list[Path]:
    """For each file name -> kid of the key now in it: keys/NAME -> retired/KID.key and
    pending/NAME -> keys/NAME. Returns the retired paths."""
    pending = keys_dir / PENDING_DIR
    retired = keyfiles.ensure_private_dir(keys_dir / RETIRED_DIR)
    missing = [n for n in current_kids if not (pending / n).is_file()]
    if missing:
        raise keyfiles.KeyFileError(f"{pending}: no pending {', '.join(missing)}; start the "
                                    "renewal again (`vitalbridge gateway renew`)")
    done: list[tuple[Path, Path]] = []
    try:
        for name, kid in current_kids.items():
            for source, target in ((keys_dir / name, retired / f"{kid}.key"),
                                   (pending / name, keys_dir / name)):
                if target.exists():
                    raise keyfiles.KeyFileError(f"{target}: already exists; refusing to "
                                                "overwrite a key")
                os.replace(source, target)
                done.append((source, target))
    except BaseException:
        for source, target in reversed(done):
            os.replace(target, source)
        raise
    finally:
        for directory in (keys_dir, pending, retired):
            keyfiles._fsync_dir(directory)  # same durability as key writes
    return [retired / f"{kid}.key" for kid in current_kids.values()]
