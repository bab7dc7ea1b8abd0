"""A network delay on a kernel without netem: the node's outgoing packets sent to an NFQUEUE and held there by
a delay process of the fault's own, in the node's namespace.

``start`` runs ``_nfqueue.py`` (stdlib only, by path) under the namespace's command prefix, waits (bounded)
until it says the kernel bound its queue, then adds the rule: a chain of the fault's own in iptables' mangle
table (the nf_tables backend, ``iptables-nft``: this kernel has the xtables NFQUEUE target through nft's
compat layer, not nft's own ``queue``), jumped to first from POSTROUTING for the packets that leave by the
node's link, which queues them with ``--queue-bypass``. ``stop`` removes the jump and the chain, then stops
the process by its pid: SIGTERM, on which it lets every packet it holds go at once and exits (SIGKILL after
``STOP_TIMEOUT_S``).

What a dead delay process does: the kernel drops the packets it was holding (at most one delay's worth, a
short loss that TCP resends), and from then on ``--queue-bypass`` lets packets through undelayed, because
no one listens on the queue: the delay ends early, the node is never cut off. The heal removes the rule all
the same. If whoever started it dies (a test, the ``chaos run`` controller), the process sees its stdin
close, lets its packets go and exits; the rule, passing packets, stays until the namespace goes (its
cluster's end, or the sweep that follows a crash).

The newest delay of a node applies (its jump is inserted first, and a queued packet leaves the chain); each
heal removes its own chain only, so an older delay still in place applies again.

It must never touch a chain but its own, nor stop a process it did not start.
"""

from __future__ import annotations

import selectors
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ember.chaos._network import INSIDE_LINK, NetworkCommandError, run

IPTABLES = "/usr/sbin/iptables-nft"
IPTABLES_RESTORE = "/usr/sbin/iptables-nft-restore"
IPTABLES_PACKAGE = "iptables"
DELAY_SCRIPT = Path(__file__).with_name("_nfqueue.py")
READY_TIMEOUT_S = 20.0  # a Python start under load, and the kernel's answer
STOP_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class DelayProcess:
    """A delay in place: its chain (in table mangle), its queue and the process that holds the packets."""

    chain: str
    queue: int
    link: str
    process: subprocess.Popen[bytes] = field(compare=False, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid


def start(inside: list[str], chain: str, queue: int, delay_ms: int, jitter_ms: int, seed: int,
          link: str = INSIDE_LINK) -> DelayProcess:
    """Delay what leaves by ``link`` in the namespace ``inside`` runs commands in; NetworkCommandError (the
    process's or iptables' own words) if it cannot."""
    argv = [*inside, sys.executable, "-I", str(DELAY_SCRIPT), str(queue), str(delay_ms), str(jitter_ms), str(seed)]
    try:
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        raise NetworkCommandError(f"the delay process (`{' '.join(argv)}`) could not start: {exc}") from exc
    delay = DelayProcess(chain, queue, link, process)
    try:
        _wait_ready(delay)
        script = "\n".join(["*mangle", f":{chain} - [0:0]", f"-A {chain} -j NFQUEUE --queue-num {queue} --queue-bypass",
                            f"-I POSTROUTING 1 -o {link} -j {chain}", "COMMIT", ""])
        _restore(inside, script)
    except BaseException:
        _stop_process(delay)
        raise
    return delay


def stop(inside: list[str] | tuple[str, ...], delay: DelayProcess) -> None:
    """Remove the rule, then stop the process; a namespace already gone is nothing to remove."""
    iptables = [*inside, IPTABLES, "-w", "-t", "mangle"]
    run([*iptables, "-D", "POSTROUTING", "-o", delay.link, "-j", delay.chain], COMMAND_TIMEOUT_S, check=False)
    run([*iptables, "-F", delay.chain], COMMAND_TIMEOUT_S, check=False)
    run([*iptables, "-X", delay.chain], COMMAND_TIMEOUT_S, check=False)
    _stop_process(delay)


def rules(inside: list[str] | tuple[str, ...]) -> str:
    """The mangle table's rules in the namespace (``iptables -S``): what a test checks a heal removed."""
    return run([*inside, IPTABLES, "-w", "-t", "mangle", "-S"], COMMAND_TIMEOUT_S, check=False)


def _wait_ready(delay: DelayProcess) -> None:
    assert delay.process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(delay.process.stdout, selectors.EVENT_READ)
        ready = selector.select(READY_TIMEOUT_S)
    line = delay.process.stdout.readline().decode(errors="replace").strip() if ready else ""
    if line != "ready":
        said = _stop_process(delay)
        why = said or (f"exit {delay.process.returncode}" if ready else f"no answer in {READY_TIMEOUT_S} s")
        raise NetworkCommandError(f"the delay process for queue {delay.queue} did not start: {why}")


def _restore(inside: list[str], script: str) -> None:
    # One transaction (--noflush keeps what is there): the chain appears with its rules, or not at all.
    try:
        done = subprocess.run([*inside, IPTABLES_RESTORE, "--noflush"], input=script, capture_output=True,
                              text=True, timeout=COMMAND_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkCommandError(f"iptables-nft-restore ({' '.join(inside)}) could not run: {exc}") from exc
    if done.returncode != 0:
        raise NetworkCommandError(f"iptables-nft-restore ({' '.join(inside)}) refused the delay's rule: "
                                  f"{done.stderr.strip()}")


def _stop_process(delay: DelayProcess) -> str:
    """Stop the process (by its pid: Popen's own, never reused while unreaped); what it said on stderr."""
    process = delay.process
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)
    said = ""
    if process.stderr is not None and not process.stderr.closed:
        said = process.stderr.read().decode(errors="replace").strip()  # it has exited: the pipe is at its end
    for pipe in (process.stdin, process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()
    return said


__all__ = ["DelayProcess", "rules", "start", "stop"]
