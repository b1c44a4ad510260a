"""Shared by the secret canary tests: watch `ps` on a host while fab runs, and
search output with base64 frames decoded."""
import base64
import binascii
import re
import threading
import time


class PsPoller:
    """`ps -eo args` in a loop on the host, over its own SSH connection."""

    def __init__(self, fleet, host: str, interval: float = 0.02):
        self.client = fleet.connect(host)
        self.interval = interval
        self.chunks: list[bytes] = []
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self.chan = self.client.get_transport().open_session()
        self.chan.exec_command(f"while :; do ps -eo args; echo @@snap; sleep {self.interval}; done")
        self.thread.start()
        return self

    def _loop(self):
        while not self.stop_ev.is_set():
            if self.chan.recv_ready():
                self.chunks.append(self.chan.recv(1 << 16))
            else:
                time.sleep(0.005)

    def __exit__(self, *exc):
        time.sleep(0.2)
        self.stop_ev.set()
        self.thread.join(5)
        self.chan.close()
        self.client.close()

    @property
    def text(self) -> str:
        return b"".join(self.chunks).decode(errors="replace")


B64 = re.compile(r"[A-Za-z0-9+/]{8,}={0,2}")


def with_decoded(text: str) -> str:
    """The text plus every base64-looking token decoded: -vv streams probe
    output base64-framed (tasks/verify/checks.py), which a plain grep would miss."""
    extra = []
    for tok in B64.findall(text):
        try:
            extra.append(base64.b64decode(tok + "=" * (-len(tok) % 4)).decode("utf-8", "replace"))
        except (ValueError, binascii.Error):
            continue
    return text + "\n" + "\n".join(extra)
