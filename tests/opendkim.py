"""A second DKIM verifier for the tests: OpenDKIM's ``opendkim-testmsg`` (Debian's
opendkim-tools), asking a DNS server the test starts for the keys.

opendkim-testmsg takes no public key and no DNS server (its ``-k`` is a signing key; man
opendkim-testmsg), and libopendkim looks keys up through the system resolver, which takes no
port: so the check runs in namespaces of its own (``unshare --net --mount``, root): a loopback
of its own where dnsmasq answers on 127.0.0.1:53 with the test's TXT records, and an
``/etc/resolv.conf`` bind-mounted over the machine's, seen only inside. Nothing outside the
namespaces changes, and everything started in them ends with them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from .servers import which

# run inside the namespaces: argv = workdir; prints a JSON list of [exit status, stderr]
_INSIDE = r'''
import json, subprocess, sys, time
from pathlib import Path
import dns.resolver

work = Path(sys.argv[1])
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["mount", "--bind", str(work / "resolv.conf"), "/etc/resolv.conf"], check=True)
dnsmasq = subprocess.Popen([sys.argv[2], "--keep-in-foreground", "--conf-file=" + str(work / "dnsmasq.conf"),
                            "--pid-file=", "--log-facility=-"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    deadline = time.monotonic() + 10
    while True:
        r = dns.resolver.Resolver(configure=False)
        r.nameservers, r.lifetime = ["127.0.0.1"], 0.5
        try:
            r.resolve("probe.invalid", "A")
            break
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            break
        except Exception:
            if time.monotonic() > deadline or dnsmasq.poll() is not None:
                raise SystemExit("dnsmasq did not answer on 127.0.0.1:53 inside the namespace")
            time.sleep(0.02)  # polled until the deadline above
    results = []
    for path in sorted(work.glob("message-*.eml"), key=lambda p: int(p.stem.split("-")[1])):
        with open(path, "rb") as fh:
            proc = subprocess.run([sys.argv[3]], stdin=fh, capture_output=True, timeout=30)
        results.append([proc.returncode, proc.stderr.decode("utf-8", "replace").strip()])
    print(json.dumps(results))
finally:
    dnsmasq.terminate()
    dnsmasq.wait(10)
'''


@dataclass(frozen=True)
class Verdict:
    status: int  # opendkim-testmsg's exit status: 0 when the signature verifies
    error: str

    @property
    def ok(self) -> bool:
        return self.status == 0 and not self.error


def verify(messages: Sequence[bytes], records: Mapping[str, Sequence[str]]) -> list[Verdict]:
    """opendkim-testmsg's verdict on each message; ``records``: DNS name -> the TXT record's
    character-strings (``s1._domainkey.example.org`` -> ["v=DKIM1; k=rsa; p=..."])."""
    with tempfile.TemporaryDirectory(prefix="beanmail-opendkim-") as tmp:
        work = Path(tmp)
        txt = [f"txt-record={name.rstrip('.')}," + ",".join(f'"{s}"' for s in strings)
               for name, strings in records.items()]
        (work / "dnsmasq.conf").write_text("\n".join(["port=53", "listen-address=127.0.0.1", "bind-interfaces",
                                                      "no-resolv", "no-hosts", "user=root", "local=/invalid/", *txt]) + "\n")
        (work / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:2 attempts:1\n")
        for i, message in enumerate(messages):
            (work / f"message-{i}.eml").write_bytes(message)
        (work / "inside.py").write_text(_INSIDE)
        proc = subprocess.run([which("unshare"), "--net", "--mount", "--fork", "--kill-child", "--",
                               sys.executable, str(work / "inside.py"), str(work), which("dnsmasq"),
                               which("opendkim-testmsg")], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"opendkim-testmsg in its namespace failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return [Verdict(status, error) for status, error in json.loads(proc.stdout)]
