"""The embedded broker: kombu's filesystem transport, made safe on a full or crashed disk.

kombu's own channel opens the final `.msg` file and then writes it, so a send that fails
(ENOSPC) leaves a 0-byte message, and a consumer can take one mid-write; one message that
does not parse is an "Unrecoverable error" that kills the worker at every start. Here:
- a send writes a hidden temporary file and renames it into the queue only when whole,
  and removes it when the write fails, so the queue holds whole messages only;
- a receive renames the message into `taken/` on the same filesystem (an atomic claim,
  where kombu copies it to /tmp), and a message that cannot be read or parsed is moved
  to `bad/` with a log line, and the next one is tried.
"""

import logging
import os
import uuid
from pathlib import Path
from queue import Empty
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

log = logging.getLogger("finetune.broker")

ALIAS = "finetunefs"


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        tmp = os.path.join(self.data_folder_out, f".{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.rename(tmp, final)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise ChannelError(f"cannot add a message to {self.data_folder_out!r}: {exc}") from exc

    def _side_dir(self, name: str) -> Path:
        path = Path(self.data_folder_in).parent / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _get(self, queue):
        wanted = f"{queue}.msg"
        for filename in sorted(os.listdir(self.data_folder_in)):
            if filename.partition(".")[2] != wanted:
                continue
            taken = self._side_dir("taken") / filename
            try:
                os.rename(os.path.join(self.data_folder_in, filename), taken)
            except OSError:  # another consumer took it first
                continue
            try:
                message = loads(bytes_to_str(taken.read_bytes()))
                if not isinstance(message, dict):
                    raise ValueError(f"a message is a JSON object, not {type(message).__name__}")
            except (OSError, ValueError) as exc:
                bad = self._side_dir("bad") / filename
                try:
                    os.rename(taken, bad)
                except OSError:
                    taken.unlink(missing_ok=True)
                log.warning("moved a malformed broker message aside to %s: %s", bad, exc)
                continue
            taken.unlink(missing_ok=True)
            return message
        raise Empty()


class Transport(filesystem.Transport):
    Channel = Channel


TRANSPORT_ALIASES[ALIAS] = f"{__name__}:Transport"
