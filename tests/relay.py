"""A private Postfix instance as the relay on a loopback port: its own config, queue and data
directories, started as root (the tests run as root) and stopped with its queue removed.

It relays everything to a "remote" SMTP server (``relayhost``), and routes mail for the
return-path domain to a pipe running ``beanmail bounce`` or to an LMTP server (dovecot), so
the DSNs Postfix itself writes come back the way they would in production.
See shared notes: Postfix refuses a config directory its default main.cf does not list.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

from .servers import free_port, port_open, wait_until, which

DEFAULT_MAIN_CF = Path("/etc/postfix/main.cf")
_LOCK = Path("/tmp/beanmail-postfix.lock")
SERVICES = """\
{listen} inet n - n - - smtpd
pickup    unix n - n 60 1 pickup
cleanup   unix n - n - 0 cleanup
qmgr      unix n - n 300 1 qmgr
rewrite   unix - - n - - trivial-rewrite
bounce    unix - - n - 0 bounce
defer     unix - - n - 0 bounce
trace     unix - - n - 0 bounce
verify    unix - - n - 1 verify
flush     unix n - n 1000? 0 flush
proxymap  unix - - n - - proxymap
smtp      unix - - n - - smtp
relay     unix - - n - - smtp
showq     unix n - n - - showq
error     unix - - n - - error
retry     unix - - n - - error
discard   unix - - n - - discard
anvil     unix - - n - 1 anvil
scache    unix - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
lmtp      unix - - n - - lmtp
"""


@contextlib.contextmanager
def _default_config_lock() -> Iterator[None]:
    with open(_LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _alternate_dirs(change: "callable") -> None:  # type: ignore[valid-type]
    """Add or remove our config directory in the default main.cf's alternate_config_directories
    (other test runs on the machine may be doing the same: under a lock, dead entries pruned)."""
    with _default_config_lock():
        lines = DEFAULT_MAIN_CF.read_text().splitlines() if DEFAULT_MAIN_CF.exists() else []
        current: list[str] = []
        rest = []
        for line in lines:
            if line.startswith("alternate_config_directories"):
                current = [d for d in line.split("=", 1)[1].replace(",", " ").split() if Path(d).is_dir()]
            else:
                rest.append(line)
        dirs = change(current)
        if dirs:
            rest.append("alternate_config_directories = " + " ".join(dirs))
        DEFAULT_MAIN_CF.parent.mkdir(parents=True, exist_ok=True)
        DEFAULT_MAIN_CF.write_text("\n".join(rest) + "\n")


class PostfixRelay:
    def __init__(self, relayhost: str, *, routes: dict[str, str] | None = None, pipe_argv: str = "",
                 pipe_user: str = "nobody", pipe_environment: dict[str, str] | None = None,
                 main_cf: dict[str, str] | None = None) -> None:
        """``relayhost``: host:port of the "remote" server; ``routes``: domain -> transport
        (``beanmail:`` for the pipe running ``pipe_argv``, ``lmtp:inet:127.0.0.1:PORT``);
        ``main_cf``: main.cf lines over these (e.g. a queue lifetime, to queue instead of bounce)."""
        self.postfix = which("postfix")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="beanmail-postfix-"))
        os.chmod(self.dir, 0o755)
        self.conf, self.queue, self.data = self.dir / "conf", self.dir / "queue", self.dir / "data"
        for d in (self.conf, self.queue, self.data):
            d.mkdir()
        shutil.chown(self.data, "postfix")
        self.log = self.dir / "maillog"
        routes = routes or {}
        transport = ", ".join(f"{domain}={target}" for domain, target in routes.items())
        main = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue), "data_directory": str(self.data),
            "command_directory": "/usr/sbin", "daemon_directory": "/usr/lib/postfix/sbin",
            "mail_owner": "postfix", "setgid_group": "postdrop",
            "myhostname": "relay.beanmail.test", "mydomain": "beanmail.test", "myorigin": "beanmail.test",
            "mydestination": "", "local_recipient_maps": "", "alias_maps": "", "alias_database": "",
            "inet_interfaces": "127.0.0.1", "inet_protocols": "ipv4", "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "relayhost": f"[{relayhost.rpartition(':')[0]}]:{relayhost.rpartition(':')[2]}",
            "transport_maps": f"inline:{{ {transport} }}" if transport else "",
            "bounce_queue_lifetime": "0", "maximal_queue_lifetime": "0",
            "queue_run_delay": "1s", "minimal_backoff_time": "1s", "maximal_backoff_time": "2s",
            "smtp_tls_security_level": "none", "smtpd_tls_security_level": "none", "lmtp_tls_security_level": "none",
            "smtp_connect_timeout": "5s", "smtp_helo_timeout": "10s",
            "maillog_file": str(self.log), "maillog_file_prefixes": str(self.dir),
            "biff": "no", "append_dot_mydomain": "no", "smtputf8_enable": "no",
            "beanmail_destination_recipient_limit": "1",
        }
        main.update(main_cf or {})
        if pipe_environment:  # the pipe's command sees only what master imports and exports
            names = " ".join(pipe_environment)
            main["import_environment"] = ("MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C POSTLOG_SERVICE POSTLOG_HOSTNAME "
                                          + " ".join(f"{k}={v}" for k, v in pipe_environment.items()))
            main["export_environment"] = f"TZ MAIL_CONFIG LANG {names}"
        (self.conf / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
        services = SERVICES.format(listen=f"127.0.0.1:{self.port}").replace("1000?", "1000")
        if pipe_argv:
            services += f"beanmail  unix - n n - - pipe\n  flags=DORq user={pipe_user} argv={pipe_argv}\n"
        (self.conf / "master.cf").write_text(services)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}?starttls=off"

    def _postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.postfix, "-c", str(self.conf), *args], capture_output=True, text=True,
                              timeout=60, check=check)

    def start(self) -> "PostfixRelay":
        _alternate_dirs(lambda dirs: [*dirs, str(self.conf)])
        proc = self._postfix("start", check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"postfix start failed ({proc.returncode}): {proc.stderr}\n{self.maillog()}")
        wait_until(lambda: port_open("127.0.0.1", self.port), 20, f"postfix smtpd on {self.port}\n{self.maillog()}")
        return self

    def queue_length(self) -> int:
        """Messages in the queue (incoming, active, deferred, hold), as `postqueue -j` lists them."""
        return sum(1 for line in self._postfix_queue().splitlines() if line.strip())

    def queue_command(self) -> str:
        """The command an operator names in BEANMAIL_RELAY_QUEUE_COMMAND for this instance."""
        return f"{which('postqueue')} -c {self.conf} -j"

    def _postfix_queue(self) -> str:
        return subprocess.run([which("postqueue"), "-c", str(self.conf), "-j"], capture_output=True, text=True,
                              timeout=30, check=True).stdout

    def flush(self) -> None:
        """`postqueue -f`: every deferred message tried again now."""
        subprocess.run([which("postqueue"), "-c", str(self.conf), "-f"], capture_output=True, timeout=30, check=True)

    def maillog(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        self._postfix("stop", check=False)
        pid = self.data / "master.lock"
        with contextlib.suppress(Exception):
            wait_until(lambda: not port_open("127.0.0.1", self.port), 10, "postfix to stop")
        _alternate_dirs(lambda dirs: [d for d in dirs if d != str(self.conf)])
        shutil.rmtree(self.dir, ignore_errors=True)
        del pid


class Dovecot:
    """Debian's dovecot on loopback ports: IMAPS (a self-signed certificate for 127.0.0.1, its
    own CA file for the client) and LMTP for Postfix to deliver into; one maildir that every
    user shares, any user name with ``password`` logs in."""

    password = "bounce-secret"

    def __init__(self) -> None:
        self.binary = which("dovecot")
        self.dir = Path(tempfile.mkdtemp(prefix="beanmail-dovecot-"))
        os.chmod(self.dir, 0o755)
        self.imaps_port, self.lmtp_port = free_port(), free_port()
        self.cert, self.key = self.dir / "cert.pem", self.dir / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                        "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(self.key),
                        "-out", str(self.cert)], check=True, capture_output=True, timeout=60)
        self.mail = self.dir / "mail"
        self.mail.mkdir()
        shutil.chown(self.mail, "nobody", "nogroup")
        self.log = self.dir / "dovecot.log"
        dh = Path("/usr/share/dovecot/dh.pem")
        (self.dir / "dovecot.conf").write_text(f"""\
protocols = imap lmtp
listen = 127.0.0.1
base_dir = {self.dir}/run
state_dir = {self.dir}/state
instance_name = beanmail-{self.imaps_port}
log_path = {self.log}
ssl = required
ssl_cert = <{self.cert}
ssl_key = <{self.key}
{f"ssl_dh = <{dh}" if dh.exists() else ""}
auth_mechanisms = plain
passdb {{
  driver = static
  args = password={self.password}
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={self.mail}/home allow_all_users=yes
}}
mail_location = maildir:{self.mail}/Maildir
recipient_delimiter = +
lmtp_save_to_detail_mailbox = no
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = {self.imaps_port}
    ssl = yes
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {self.lmtp_port}
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = 0
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
""")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def lmtp(self) -> str:
        return f"lmtp:inet:127.0.0.1:{self.lmtp_port}"

    def mailbox_url(self, user: str = "bounces") -> str:
        return f"imaps://{user}:{self.password}@127.0.0.1:{self.imaps_port}/INBOX?cafile={self.cert}"

    def start(self) -> "Dovecot":
        self.proc = subprocess.Popen([self.binary, "-F", "-c", str(self.dir / "dovecot.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_until(lambda: port_open("127.0.0.1", self.imaps_port) and port_open("127.0.0.1", self.lmtp_port), 20,
                   f"dovecot to listen\n{self.log.read_text(errors='replace') if self.log.exists() else ''}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(20)
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
