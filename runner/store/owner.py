"""Who may write a run directory when `flock` cannot say (a network filesystem): the attempt that
claimed it last.

A Ray task that runs a shard claims the shard's run directory when it starts, writing a fresh
token to `OUTPUT.run/owner`; once each part (and the output) is written and fsynced under a
temporary name, just before it is renamed into place, it reads the file again, and stops with
an OutputError if another attempt has claimed it since (Ray retried the shard while this
attempt was cut off, not dead); the temporary file goes. Two live attempts of one shard
therefore never both write: the older one loses at its next part, having put nothing in place
after the newer one started (but for a claim that lands between the read and the rename, a
window of one system call). The file is read afresh each time (open, read, close), which NFS's close-to-open
consistency makes current.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path

from runner.store.checkpoint import OutputError, oserror_text
from runner.store.files import write_json_atomic

__all__ = ["OwnerToken"]


class OwnerToken:
    """This attempt's claim on a run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "owner"
        self.token: str | None = None

    def claim(self) -> str:
        """Makes this attempt the directory's owner (the previous owner loses it)."""
        token = uuid.uuid4().hex
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic({"token": token, "host": socket.gethostname(), "pid": os.getpid(), "claimed_at": time.time()}, self.path)
        except OSError as err:
            raise OutputError(f"{self.path}: cannot claim the run directory: {oserror_text(err)}") from None
        self.token = token
        return token

    def holder(self) -> dict[str, object]:
        try:
            with open(self.path, encoding="utf-8") as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return {}

    def check(self) -> None:
        """Raises OutputError unless this attempt still owns the directory."""
        holder = self.holder()
        if self.token is None or holder.get("token") != self.token:
            who = f"{holder.get('host', '?')} pid {holder.get('pid', '?')}"
            raise OutputError(f"{self.path.parent}: another attempt of this shard ({who}) owns it now; this one stops without writing")
