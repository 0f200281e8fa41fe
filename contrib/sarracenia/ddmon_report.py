"""ddmon_report: the log records ddmon needs, from any Sarracenia 3 (sr3) flow.

sr3's own ``callback report`` (3.3.1) reports only what ended well or was rejected, on the
flow's *post* exchange, and names neither the host that did the transfer nor the client it
was done for. This callback publishes, for every message the flow transfers, ddmon log
records (SPEC §2, v03 with ``report.host``/``report.user``) to a broker and exchange of your
choice (default: the flow's own broker, exchange ``log``):

* ``102`` when the transfer starts (dd_watchdog then sees it in flight);
* the final code when it ends: sr3's own report code (``201`` downloaded, ``204`` not
  overwritten...), and for a failure that sr3 sends to its retry queue a ``499`` (or sr3's
  own 4xx/5xx code when it set one); a retried transfer gives a new ``102`` and a new final.

Each record carries the consuming host (fqdn), the client (the broker user unless set), the
source, the flow (``<component>/<config>``), the size and the duration since the ``102``.

It takes two lines in the flow's configuration, because sr3 runs its retry callback between
them: the first half must see failed transfers before sr3's retry queue takes them, the
second must see retried messages after sr3 put them back in the work list::

    flowCallbackPrepend ddmon_report.Final
    flowCallback ddmon_report.Start

Options (all optional)::

    ddmon_broker   amqp://user@host/vhost   where to publish [the flow's broker]; the
                                            password comes from sr3's credentials.conf
    ddmon_exchange log                      exchange (a durable topic exchange, declared
                                            when missing)
    ddmon_client   NAME                     the client named in the records [broker user]
    ddmon_host     NAME                     the host named in the records [fqdn]
    ddmon_backlog  100000                   records kept while the broker is unreachable;
                                            beyond, the oldest are dropped (and counted)

Records are published with publisher confirms; while the broker is unreachable they are kept
(in memory, up to ``ddmon_backlog``) and sent, in order, once it answers again (reconnects
are tried with a capped backoff, never more than once per hook call, so a dead broker does
not stall the flow). On stop, what is still unsent is said in the log.

Install: copy this file to ``~/.config/sr3/plugins/`` (sr3 puts that directory on its
Python path), or anywhere on ``PYTHONPATH``. Needs the ``amqp`` package (sr3's own AMQP
client).
"""

import json
import logging
import socket
import time
import urllib.parse
from collections import deque

import amqp

import sarracenia
from sarracenia.flowcb import FlowCB

logger = logging.getLogger(__name__)

__all__ = ["Final", "Start"]

# One publisher per (broker, exchange) in the process, shared by the two halves.
_PUBLISHERS = {}

# Kept in the message between the two halves (and removed before sr3 posts it): when the
# transfer started, that it did, and the URL it was started for (sr3 rewrites baseUrl and
# relPath to the downloaded copy's before after_work).
_START = "_ddmon_start"
_STARTED = "_ddmon_started"
_BASE = "_ddmon_baseUrl"
_REL = "_ddmon_relPath"
_KEYS = {_START, _STARTED, _BASE, _REL}


def _stamp(t):
    """sr3's v03 time stamp: YYYYMMDDTHHMMSS.fff... (UTC)."""
    return sarracenia.timeflt2str(t)


class _Publisher:
    """A confirmed publisher to one exchange that keeps what it could not send."""

    def __init__(self, url, exchange, backlog):
        self.url = url
        self.exchange = exchange
        self.pending = deque()
        self.max_pending = backlog
        self.dropped = 0
        self.sent = 0
        self.conn = None
        self.channel = None
        self.failures = 0
        self.next_try = 0.0
        self.down_logged = False

    def _params(self):
        u = self.url
        tls = u.scheme == "amqps"
        vhost = urllib.parse.unquote(u.path.strip("/")) if u.path.strip("/") else "/"
        return dict(
            host="%s:%d" % (u.hostname or "localhost", u.port or (5671 if tls else 5672)),
            userid=urllib.parse.unquote(u.username or "guest"),
            password=urllib.parse.unquote(u.password or ""),
            virtual_host=vhost,
            ssl=tls,
            confirm_publish=True,
            connect_timeout=5,
        )

    def where(self):
        u = self.url
        return "%s://%s@%s/%s" % (u.scheme, u.username, u.hostname, self.exchange)

    def _connect(self):
        conn = amqp.Connection(**self._params())
        conn.connect()
        ch = conn.channel()
        try:
            ch.exchange_declare(self.exchange, "topic", passive=True)
        except amqp.exceptions.NotFound:
            ch = conn.channel()
            ch.exchange_declare(self.exchange, "topic", durable=True, auto_delete=False)
        self.conn, self.channel = conn, ch

    def _drop_connection(self):
        conn, self.conn, self.channel = self.conn, None, None
        if conn is not None:
            try:
                conn.collect()
            except Exception:
                pass

    def add(self, key, body):
        if len(self.pending) >= self.max_pending:
            self.pending.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.error(
                    "ddmon_report: broker unreachable and backlog full (%d): %d records dropped",
                    self.max_pending,
                    self.dropped,
                )
        self.pending.append((key, body))

    def flush(self, force=False):
        """Send what is pending; on failure keep it and back off."""
        if not self.pending:
            return True
        now = time.monotonic()
        if self.channel is None:
            if not force and now < self.next_try:
                return False
            try:
                self._connect()
            except Exception as ex:
                self._failed(ex)
                return False
        try:
            while self.pending:
                key, body = self.pending[0]
                self.channel.basic_publish(
                    amqp.Message(body, content_type="application/json", delivery_mode=2),
                    exchange=self.exchange,
                    routing_key=key,
                )
                self.pending.popleft()
                self.sent += 1
        except Exception as ex:
            self._drop_connection()
            self._failed(ex)
            return False
        if self.down_logged:
            logger.warning("ddmon_report: %s answers again", self.where())
        self.failures, self.down_logged = 0, False
        return True

    def _failed(self, ex):
        self.failures += 1
        delay = min(2 ** min(self.failures, 6), 60)
        self.next_try = time.monotonic() + delay
        if not self.down_logged:
            logger.warning(
                "ddmon_report: cannot publish to %s (%s); %d records kept, retrying every %ds at most",
                self.where(),
                ex,
                len(self.pending),
                delay,
            )
            self.down_logged = True

    def close(self):
        self.flush(force=True)
        if self.pending:
            logger.error(
                "ddmon_report: stopping with %d records unsent to %s", len(self.pending), self.where()
            )
        self._drop_connection()


class _Half(FlowCB):
    def __init__(self, options):
        super().__init__(options, logger)
        self.o.add_option("ddmon_broker", "str", None)
        self.o.add_option("ddmon_exchange", "str", "log")
        self.o.add_option("ddmon_client", "str", None)
        self.o.add_option("ddmon_host", "str", None)
        self.o.add_option("ddmon_backlog", "count", 100000)
        if self.o.ddmon_broker:
            ok, details = self.o.credentials.validate_urlstr(self.o.ddmon_broker)
            url = details.url if ok else None
        else:
            url = getattr(getattr(self.o, "broker", None), "url", None)
        if url is None:
            # sr3 reports this as the callback not loading, with this text
            raise ValueError(
                "ddmon_report: no broker to publish to: set ddmon_broker (its password in "
                "credentials.conf), or give the flow a broker it can log in to"
            )
        self.host = self.o.ddmon_host or socket.getfqdn()
        self.client = self.o.ddmon_client or urllib.parse.unquote(url.username or "unknown")
        self.flow = "%s/%s" % (getattr(self.o, "component", "sr3"), getattr(self.o, "config", "?"))
        ident = (url.geturl(), self.o.ddmon_exchange)
        if ident not in _PUBLISHERS:
            _PUBLISHERS[ident] = _Publisher(url, self.o.ddmon_exchange, self.o.ddmon_backlog)
        self.publisher = _PUBLISHERS[ident]

    def _record(self, msg, code, text, now):
        report = {"code": code, "timeCompleted": _stamp(now), "host": self.host, "user": self.client}
        if text:
            report["message"] = text
        if code != 102:
            # sr3's own rate gives this file's transfer time; else the time since the 102
            # (sr3 works in batches: that is the batch's time).
            rate = (msg.get("report") or {}).get("rate")
            start = msg.get(_START)
            if rate and msg.get("size"):
                report["elapsed"] = round(msg["size"] / rate, 6)
            elif start is not None:
                report["elapsed"] = round(max(now - start, 0.0), 6)
        rel = msg.get(_REL, msg.get("relPath", ""))
        body = {
            "pubTime": msg.get("pubTime") or _stamp(now),
            "baseUrl": msg.get(_BASE, msg.get("baseUrl", "")),
            "relPath": rel,
            "flow": self.flow,
            "report": report,
        }
        for k in ("source", "from_cluster", "to_clusters", "size", "identity"):
            if msg.get(k) is not None:
                body[k] = msg[k]
        words = [w for w in rel.split("/")[:-1] if w]
        key = ".".join(["v03", "report"] + [w.replace(".", "%2E") for w in words])
        self.publisher.add(key[:255], json.dumps(body))

    def after_work(self, worklist):
        self.publisher.flush()

    def on_housekeeping(self):
        self.publisher.flush()
        logger.info(
            "ddmon_report: %d records sent, %d pending, %d dropped",
            self.publisher.sent,
            len(self.publisher.pending),
            self.publisher.dropped,
        )

    def on_stop(self):
        self.publisher.close()


class Start(_Half):
    """The 102 of every transfer about to be worked, retried ones included (load it with
    ``flowCallback``, after sr3's retry callback)."""

    def after_accept(self, worklist):
        now = time.time()
        for msg in worklist.incoming:
            msg[_START] = now
            msg[_STARTED] = True
            msg[_BASE] = msg.get("baseUrl", "")
            msg[_REL] = msg.get("relPath", "")
            msg["_deleteOnPost"] |= _KEYS
            self._record(msg, 102, "transfer started", now)
        self.publisher.flush()

    def after_work(self, worklist):
        pass

    def on_housekeeping(self):
        self.publisher.flush()

    def on_stop(self):
        pass


class Final(_Half):
    """The final code of every transfer that was started (load it with
    ``flowCallbackPrepend``, before sr3's retry callback takes the failed ones)."""

    def after_work(self, worklist):
        now = time.time()
        for msg in worklist.ok:
            if msg.get(_STARTED):
                rep = msg.get("report") or {}
                self._record(msg, int(rep.get("code", 201)), rep.get("message", "ok"), now)
        for msg in worklist.rejected:
            if msg.get(_STARTED):
                rep = msg.get("report") or {}
                self._record(msg, int(rep.get("code", 499)), rep.get("message", "rejected"), now)
        for msg in worklist.failed:
            if msg.get(_STARTED):
                rep = msg.get("report") or {}
                code = int(rep.get("code", 0))
                if code < 400:
                    code, text = 499, "transfer failed, queued for retry"
                else:
                    text = rep.get("message", "failed")
                self._record(msg, code, text, now)
        for msg in worklist.ok + worklist.rejected + worklist.failed:
            msg.pop(_STARTED, None)
        self.publisher.flush()
