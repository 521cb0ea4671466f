"""A tiny issue tracker: commenting on an issue notifies its watchers, except the commenter.

The classic watch-list hook, in plain WSGI and sqlite3, to show the one rule that matters: the
notification is enqueued after the comment is committed (producer.hooks.transaction). Each user
chooses "immediately" or "daily digest" (/prefs): the choice is a beanmail preference, so the
hook itself never changes and a busy issue sends a digest user one mail a day (docs/digests.md).
A private issue is seen by its watchers only, and its mail is checked again when it goes: a
watcher removed after the comment was queued gets nothing (the workers need ``entities()``, below,
as ``[beanmail.entities.issue]`` in beanmail.toml; README "Settings").
With ``--events-secret`` (beanmail's BEANMAIL_EVENTS_SECRET, its BEANMAIL_EVENTS_URL pointing at
``/beanmail/events``) comment mail asks for replies and a reply becomes a comment (replies.py;
a private issue takes replies only from who still watches it).

    python examples/tracker/app.py            # http://127.0.0.1:8000/ against the dev stack
"""

from __future__ import annotations

import argparse
import html
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs
from wsgiref.simple_server import make_server

from producer import Notifier
from producer.hooks import transaction

from .replies import ReplyHook

ROOT = Path(__file__).resolve().parents[2]

SCHEMA = """
CREATE TABLE IF NOT EXISTS issues (id INTEGER PRIMARY KEY, title TEXT NOT NULL, private INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS watchers (issue_id INTEGER NOT NULL, email TEXT NOT NULL, name TEXT NOT NULL,
                                     PRIMARY KEY (issue_id, email));
CREATE TABLE IF NOT EXISTS comments (id INTEGER PRIMARY KEY, issue_id INTEGER NOT NULL,
                                     author TEXT NOT NULL, body TEXT NOT NULL);
"""
DELIVERY = {"immediate": "immediately", "daily": "daily digest"}
SEED = [
    (1, "Login fails with a ü in the password", [("ann@example.com", "Ann Müller"), ("bob@example.com", "Bob"),
                                                 ("cat@example.com", "Cat")]),
    (2, "Dark mode", [("ann@example.com", "Ann Müller")]),
    (3, "Session tokens in the access log", [("ann@example.com", "Ann Müller"), ("bob@example.com", "Bob"),
                                             ("cat@example.com", "Cat")]),
]
PRIVATE = {3}


def entities(db_path: str) -> dict[str, dict[str, str]]:
    """The workers' resolver for a private issue's mail (``Settings.entities``, or in beanmail.toml
    ``[beanmail.entities.issue]`` with these keys): read at send time, it finds the issue not
    visible to a recipient who no longer watches it."""
    return {"issue": {"database": db_path, "sql": "SELECT id, title FROM issues WHERE id = :id",
                      "access": "SELECT 1 FROM issues i WHERE i.id = :id AND (i.private = 0 OR EXISTS (SELECT 1"
                                " FROM watchers w WHERE w.issue_id = i.id AND lower(w.email) = :recipient))"}}


class Tracker:
    def __init__(self, db_path: str, notifier: Notifier, events_secret: str = "") -> None:
        self.db_path = db_path
        self.notifier = notifier
        self._local = threading.local()
        with self.db() as db:
            db.executescript(SCHEMA)
            if "private" not in [c[1] for c in db.execute("PRAGMA table_info(issues)")]:  # a database from before
                db.execute("ALTER TABLE issues ADD COLUMN private INTEGER NOT NULL DEFAULT 0")
            if not db.execute("SELECT 1 FROM issues").fetchone():
                for issue_id, title, watchers in SEED:
                    db.execute("INSERT INTO issues VALUES (?, ?, ?)", (issue_id, title, int(issue_id in PRIVATE)))
                    db.executemany("INSERT INTO watchers VALUES (?, ?, ?)",
                                   [(issue_id, e, n) for e, n in watchers])
        self.replies = ReplyHook(events_secret, self.db, self.comment) if events_secret else None

    def db(self) -> sqlite3.Connection:
        if not hasattr(self._local, "db"):
            self._local.db = sqlite3.connect(self.db_path)
        return self._local.db

    def comment(self, issue_id: int, author: str, body: str) -> int:
        db = self.db()
        title = db.execute("SELECT title, private FROM issues WHERE id = ?", (issue_id,)).fetchone()
        if title is None:
            raise LookupError(issue_id)
        # a private issue's mail names it, so the worker asks at send time whether each watcher may still see it
        checked = {"issue": {"type": "issue", "id": issue_id}} if title[1] else None
        with transaction(db, self.notifier) as mail:
            comment_id = db.execute("INSERT INTO comments (issue_id, author, body) VALUES (?, ?, ?)",
                                    (issue_id, author, body)).lastrowid
            db.execute("INSERT OR IGNORE INTO watchers VALUES (?, ?, ?)", (issue_id, author, author))
            watchers = [{"address": e, "name": n}
                        for e, n in db.execute("SELECT email, name FROM watchers WHERE issue_id = ?", (issue_id,))]
            mail.notify_watchers("comment", watchers, actor=author, key=f"comment:{comment_id}", entities=checked,
                                 reply=self.replies is not None, context={
                "issue": {"id": issue_id, "title": title[0]},
                "comment": {"id": comment_id, "author": author, "body": body},
            })
        return int(comment_id)

    def unwatch(self, issue_id: int, email: str) -> None:
        with self.db() as db:
            db.execute("DELETE FROM watchers WHERE issue_id = ? AND email = ?", (issue_id, email))

    # -- WSGI -----------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", "/"), environ["REQUEST_METHOD"]
        parts = [p for p in path.split("/") if p]
        try:
            if method == "GET" and not parts:
                return self._page(start_response, self._index())
            if method == "GET" and len(parts) == 2 and parts[0] == "issues":
                return self._page(start_response, self._issue(int(parts[1])))
            if parts == ["prefs"] and method == "GET":
                return self._page(start_response, self._prefs_page())
            if parts == ["prefs"] and method == "POST":
                size = int(environ.get("CONTENT_LENGTH") or 0)
                form = parse_qs(environ["wsgi.input"].read(size).decode())
                email, mode = form.get("email", [""])[0].strip(), form.get("mode", [""])[0]
                if not email or mode not in DELIVERY:
                    return self._page(start_response, "<p>email and a choice are required</p>", "400 Bad Request")
                self.set_delivery(email, mode)
                start_response("303 See Other", [("Location", "/prefs")])
                return [b""]
            if parts == ["beanmail", "events"] and method == "POST" and self.replies is not None:
                status, text = self.replies.receive(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)),
                                                    environ)
                start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
                return [text.encode()]
            if method == "POST" and len(parts) == 3 and parts[0] == "issues" and parts[2] == "comments":
                size = int(environ.get("CONTENT_LENGTH") or 0)
                form = parse_qs(environ["wsgi.input"].read(size).decode())
                author, body = form.get("author", [""])[0].strip(), form.get("body", [""])[0].strip()
                if not author or not body:
                    return self._page(start_response, "<p>author and body are required</p>", "400 Bad Request")
                self.comment(int(parts[1]), author, body)
                start_response("303 See Other", [("Location", f"/issues/{parts[1]}")])
                return [b""]
        except (LookupError, ValueError):
            pass
        return self._page(start_response, "<p>not found</p>", "404 Not Found")

    def set_delivery(self, email: str, mode: str) -> None:
        """"immediate" or "daily": a preference in beanmail's store, which every worker reads
        as it sends; the comment hook stays as it is."""
        self.notifier.set_preferences(email, mode=mode)

    def delivery(self, email: str) -> str:
        prefs = self.notifier.preferences(email)
        return prefs.mode if prefs is not None and prefs.mode in DELIVERY else "immediate"

    def _prefs_page(self) -> str:
        people = [e for (e,) in self.db().execute("SELECT DISTINCT email FROM watchers ORDER BY email")]
        rows = "".join(
            f'<li><form method="post" action="/prefs">{html.escape(e)} <input type="hidden" name="email"'
            f' value="{html.escape(e)}">' + "".join(
                f'<label><input type="radio" name="mode" value="{m}"{" checked" if self.delivery(e) == m else ""}>'
                f"{label}</label> " for m, label in DELIVERY.items()) + "<button>Save</button></form></li>"
            for e in people)
        return f"<h1>Notification mail</h1><ul>{rows}</ul>"

    def _index(self) -> str:
        rows = self.db().execute("SELECT id, title, private FROM issues ORDER BY id").fetchall()
        items = "".join(f'<li><a href="/issues/{i}">#{i} {html.escape(t)}</a>{" (private)" if p else ""}</li>'
                        for i, t, p in rows)
        return f'<h1>Issues</h1><ul>{items}</ul><p><a href="/prefs">Notification mail: immediately or daily digest</a></p>'

    def _issue(self, issue_id: int) -> str:
        db = self.db()
        row = db.execute("SELECT title FROM issues WHERE id = ?", (issue_id,)).fetchone()
        if row is None:
            raise LookupError(issue_id)
        comments = "".join(f"<li><b>{html.escape(a)}</b>: {html.escape(b)}</li>" for a, b in
                           db.execute("SELECT author, body FROM comments WHERE issue_id = ? ORDER BY id", (issue_id,)))
        watchers = ", ".join(html.escape(n) for (n,) in db.execute("SELECT name FROM watchers WHERE issue_id = ?", (issue_id,)))
        return (f"<h1>#{issue_id} {html.escape(row[0])}</h1><p>Watchers: {watchers}</p><ul>{comments}</ul>"
                f'<form method="post" action="/issues/{issue_id}/comments">'
                f'<input name="author" placeholder="your e-mail" value="bob@example.com">'
                f'<textarea name="body"></textarea><button>Comment</button></form>')

    @staticmethod
    def _page(start_response: Callable[..., Any], body: str, status: str = "200 OK") -> list[bytes]:
        data = f"<!doctype html><meta charset=utf-8><title>tracker</title>{body}".encode()
        start_response(status, [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(data)))])
        return [data]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--db", default=str(ROOT / "var" / "tracker.sqlite3"))
    parser.add_argument("--beanstalk", default=None, help="default: $BEANMAIL_BEANSTALK_URL or the local one")
    parser.add_argument("--store", default=os.environ.get("BEANMAIL_STORE") or str(ROOT / "var" / "beanmail.sqlite3"),
                        help="beanmail's store, where the digest choice is kept (default: the dev stack's)")
    parser.add_argument("--events-secret", default=os.environ.get("BEANMAIL_EVENTS_SECRET", ""),
                        help="whsec_...: receive beanmail's events at /beanmail/events and turn replies into comments")
    args = parser.parse_args()
    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    app = Tracker(args.db, Notifier(args.beanstalk, blobs=args.store), args.events_secret)
    print(f"tracker on http://127.0.0.1:{args.port}/ — comment on an issue, then look in the catcher")
    make_server("127.0.0.1", args.port, app).serve_forever()


if __name__ == "__main__":
    main()
