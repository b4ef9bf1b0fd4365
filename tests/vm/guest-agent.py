#!/usr/bin/env python3
"""Host side of the guest's command channel (twl-agent on the guest's second serial port).

Start the guest with the channel as a unix socket and a script that runs the agent:

    echo 'exec twl-agent' > agent.sh
    tests/vm/run-guest.sh agent.sh -serial unix:/tmp/g.sock,server=on,wait=on &

With wait=on, qemu does not start the guest before a client is connected, so the agent's
ready banner cannot be lost. Then, from a shell:

    tests/vm/guest-agent.py --ready /tmp/g.sock 'mount -t nfs -o vers=3 10.0.2.2:/export /mnt'
    ... act on the host ...
    tests/vm/guest-agent.py /tmp/g.sock 'cat /mnt/f' --quit

Each invocation connects, runs its commands in order (one line each, no newlines inside),
prints their output, and exits with the first non-zero exit code. Or import GuestAgent.
"""

import argparse
import socket
import sys
import time

READY = b"__TWL_READY__\n"
RC_MARKER = b"\n__TWL_RC__="
QUIT = b"__TWL_QUIT__\n"
BYE = b"__TWL_BYE__\n"
CONNECT_TIMEOUT_S = 60.0
COMMAND_TIMEOUT_S = 600.0
CONNECT_RETRY_S = 0.05
RECV_BYTES_MAX = 65536


class GuestAgent:
    """One connection to the guest's agent; commands run one at a time."""

    def __init__(self, path, connect_timeout_s=CONNECT_TIMEOUT_S, wait_ready=False):
        deadline = time.monotonic() + connect_timeout_s
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no guest agent socket at {path} after {connect_timeout_s} s")
                time.sleep(CONNECT_RETRY_S)
        self.buf = b""
        if wait_ready:
            self._read_until(READY, connect_timeout_s)

    def _read_until(self, marker, timeout_s):
        """Returns what came before marker and consumes the marker."""
        deadline = time.monotonic() + timeout_s
        while marker not in self.buf:
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                raise TimeoutError(f"guest agent silent for {timeout_s} s")
            self.sock.settimeout(left_s)
            data = self.sock.recv(RECV_BYTES_MAX)
            if not data:
                raise EOFError("guest agent closed the channel")
            self.buf += data
        before, self.buf = self.buf.split(marker, 1)
        return before

    def run(self, cmd, timeout_s=COMMAND_TIMEOUT_S):
        """Runs one shell command in the guest; returns (exit code, output)."""
        if "\n" in cmd:
            raise ValueError("one line per command")
        self.sock.sendall(cmd.encode() + b"\n")
        out = self._read_until(RC_MARKER, timeout_s)
        rc = int(self._read_until(b"\n", timeout_s))
        return rc, out.decode(errors="replace")

    def quit(self, timeout_s=CONNECT_TIMEOUT_S):
        """Ends the agent: the guest's script then exits 0 and the guest powers off.

        Waits for the agent's goodbye before closing: qemu drops what is still queued in a
        socket whose client is gone, so closing right after sending could lose the request."""
        self.sock.sendall(QUIT)
        self._read_until(BYE, timeout_s)
        self.sock.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("socket")
    ap.add_argument("commands", nargs="*")
    ap.add_argument("--ready", action="store_true", help="first wait for the agent's ready banner")
    ap.add_argument("--quit", action="store_true", help="end the agent after the commands")
    ap.add_argument("--timeout-s", type=float, default=COMMAND_TIMEOUT_S, help="bound per command")
    args = ap.parse_intermixed_args()
    agent = GuestAgent(args.socket, wait_ready=args.ready)
    first_failure = 0
    for cmd in args.commands:
        started = time.monotonic()
        rc, out = agent.run(cmd, args.timeout_s)
        sys.stdout.write(out + ("" if out.endswith("\n") or not out else "\n"))
        ms = 1000 * (time.monotonic() - started)
        print(f"guest-agent: rc={rc} in {ms:.0f} ms: {cmd}", file=sys.stderr)
        first_failure = first_failure or rc
    if args.quit:
        agent.quit()
    sys.exit(first_failure)


if __name__ == "__main__":
    main()
