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
    ddmon_alive_interval 30                 seconds between this flow's alive messages
                                            (sr3 durations: ``30``, ``1m``...); raised to
                                            what the flow's loop can keep (below)

Records are published with publisher confirms; while the broker is unreachable they are kept
(in memory, up to ``ddmon_backlog``) and sent, in order, once it answers again (reconnects
are tried with a capped backoff, never more than once per hook call, so a dead broker does
not stall the flow). On stop, what is still unsent is said in the log.

On ddmon's roster: the ``Final`` half (once per process) makes the flow one of the daemons
that ddmon's roster knows (``dd_status``, ``check_dd_alive``), with the messages ddmon's own
daemons send, on the same broker and exchange as the records (SPEC §6):

* ``v01.registry.sr3.<instance>.start`` when the flow starts (``on_start``), then
  ``v01.status.sr3.<instance>`` (``running``); on stop (``on_stop``) a status ``stopping``,
  then ``v01.registry.sr3.<instance>.stop``;
* ``v01.alive.sr3.<instance>`` every alive interval, with the records' counters (``sent``,
  ``pending``, ``dropped``). It is sent from ``after_work``, which sr3 3.3.1 calls on every
  pass of the flow's loop, messages or not: a flow wedged in its work goes silent instead of
  hiding behind a healthy timer (there is no thread). An idle sr3 loop passes about every
  10 s (``sleep`` doubles while idle until it is 5 s or more, and long sleeps are taken in
  5 s steps), so the interval said in the messages is never less than that; with ``vip`` a
  passive node runs none of the flow's hooks but ``on_housekeeping``, and then the interval is
  at least ``housekeeping``. An alive that cannot be sent is replaced by the next one (only
  the latest waits for the broker); the registry and status messages wait in the backlog.

The instance is ``<short host>-<component>_<config>_<NN>`` (``node01-subscribe_ddmon_01``:
the short name of ``ddmon_host``, then sr3's instance number, ``00`` in the foreground, so that
the same config on several nodes is several entries of the roster); in routing keys ``.`` ``#`` ``*`` ``%`` in a name are
``%2E`` ``%23`` ``%2A`` ``%25``. Bodies are JSON: ``tool`` (``sr3``), ``instance``, ``host``
(``ddmon_host``), ``pid``, ``version`` (``ddmon_report/<sr3 version>``), ``alive_interval``,
``started`` (when the process started), ``time``, times in RFC 3339 UTC; registry messages add
``event``; alive and status ``state``, ``uptime_s``, ``last_alive`` (the alive before, or
null) and ``counters``; status ``previous``.

Install: copy this file to ``~/.config/sr3/plugins/`` (sr3 puts that directory on its
Python path), or anywhere on ``PYTHONPATH``. Needs the ``amqp`` package (sr3's own AMQP
client).
"""

import json
import logging
import math
import os
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


def _rfc3339(t):
    """RFC 3339 UTC with milliseconds, as ddmon writes it: 2026-12-02T07:00:00.123Z."""
    s, ms = divmod(int(round(t * 1000)), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s)) + ".%03dZ" % ms


def _word(w):
    """One word of a routing key, as ddmon escapes it (SPEC §3)."""
    return w.replace("%", "%25").replace(".", "%2E").replace("#", "%23").replace("*", "%2A")


# The roster's messages (ddmon's own families) travel with the records but are not records.
_OWN = "v01."


class _Publisher:
    """A confirmed publisher to one exchange that keeps what it could not send."""

    def __init__(self, url, exchange, backlog):
        self.url = url
        self.exchange = exchange
        self.pending = deque()
        self.max_pending = backlog
        self.dropped = 0
        self.sent = 0
        # roster messages (v01...) among pending, and those sent: not counted as records
        self.own_pending = 0
        self.own_sent = 0
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

    def add(self, key, body, supersedes=None):
        """Keep (key, body) to send; `supersedes`, a message this one replaces, is no longer
        sent if it is still pending (an alive replaces the previous one)."""
        if supersedes is not None:
            try:
                self.pending.remove(supersedes)
            except ValueError:
                pass
            else:
                self.own_pending -= supersedes[0].startswith(_OWN)
        if len(self.pending) >= self.max_pending:
            old_key, _ = self.pending.popleft()
            if old_key.startswith(_OWN):
                self.own_pending -= 1
            else:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    logger.error(
                        "ddmon_report: broker unreachable and backlog full (%d): %d records dropped",
                        self.max_pending,
                        self.dropped,
                    )
        self.pending.append((key, body))
        self.own_pending += key.startswith(_OWN)

    def counters(self):
        """The records': sent, pending, dropped."""
        return {
            "sent": self.sent,
            "pending": len(self.pending) - self.own_pending,
            "dropped": self.dropped,
        }

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
                if key.startswith(_OWN):
                    self.own_pending -= 1
                    self.own_sent += 1
                else:
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
                "ddmon_report: stopping with %d records (and %d roster messages) unsent to %s",
                len(self.pending) - self.own_pending,
                self.own_pending,
                self.where(),
            )
        self._drop_connection()


def _idle_pass(o):
    """The longest an idle sr3 3.3.1 flow goes between two passes of its loop
    (sarracenia/flow/__init__.py, Flow.run): ``sleep`` doubles while nothing is gathered
    until it is 5 s or more, and a sleep of more than 5 s is taken in 5 s steps, the last
    one whole (``sleep 0.1``, the default: 6.4 s, slept as 10). 0: it does not sleep."""
    s = float(getattr(o, "sleep", 0.1) or 0.0)
    if s <= 0:
        return 0.0
    while s < 5:
        s *= 2
    return float(math.ceil(s / 5) * 5) if s > 5 else s


def _process_start():
    try:
        import psutil  # sr3 needs it

        return psutil.Process(os.getpid()).create_time()
    except Exception:
        return time.time()


class _Roster:
    """This flow process on ddmon's daemon roster: registry start/stop, status, alive."""

    TOOL = "sr3"

    def __init__(self, o, host, publisher):
        self.publisher = publisher
        component = getattr(o, "component", None) or "sr3"
        config = getattr(o, "config", None) or "unknown"
        # the host first, as ddmon's own default instances (<host>-<id>): the same config on
        # several nodes is several daemons
        short = (host or "localhost").split(".")[0]
        self.instance = "%s-%s_%s_%02d" % (
            short, component, config, int(getattr(o, "no", 0) or 0))
        self.host = host
        self.pid = os.getpid()
        self.started = _process_start()
        self.version = "ddmon_report/%s" % getattr(sarracenia, "__version__", "unknown")
        asked = float(o.ddmon_alive_interval or 0)
        if asked <= 0:
            raise ValueError("ddmon_report: ddmon_alive_interval must be more than 0 s")
        # the interval said must be the one kept: never less than the loop's idle pass (or,
        # with a vip, housekeeping: a passive node runs no other hook)
        floor = _idle_pass(o)
        why = "its idle loop passes every %gs" % floor
        if getattr(o, "vip", None) and component != "poll":
            hk = float(getattr(o, "housekeeping", 300) or 0)
            if hk > floor:
                floor, why = hk, "with a vip, a passive node runs only housekeeping (%gs)" % hk
        self.interval = max(asked, floor)
        if self.interval > asked:
            logger.warning(
                "ddmon_report: alive every %gs, not ddmon_alive_interval %gs: %s",
                self.interval,
                asked,
                why,
            )
        self.state = None
        self.stopped = False
        self.last_alive = None  # wall time of the last alive
        self.next_alive = None  # monotonic time the next one is due
        self.pending_alive = None  # the last alive (key, body), replaced if still unsent

    def _key(self, kind, event=None):
        head = "v01.%s.%s." % (kind, _word(self.TOOL))
        tail = "." + event if event else ""
        budget = 255 - len(head.encode()) - len(tail.encode())
        word = _word(self.instance).encode()[:budget].decode("utf-8", "ignore")
        return head + word + tail

    def _ident(self, now):
        return {
            "tool": self.TOOL,
            "instance": self.instance,
            "host": self.host,
            "pid": self.pid,
            "version": self.version,
            "alive_interval": float(self.interval),
            "started": _rfc3339(self.started),
            "time": _rfc3339(now),
        }

    def _health(self, now, state):
        body = self._ident(now)
        body["state"] = state
        body["uptime_s"] = round(max(now - self.started, 0.0), 3)
        body["last_alive"] = _rfc3339(self.last_alive) if self.last_alive is not None else None
        body["counters"] = self.publisher.counters()
        return body

    def _registry(self, event, now):
        body = self._ident(now)
        body["event"] = event
        self.publisher.add(self._key("registry", event), json.dumps(body))

    def _status(self, state, now):
        body = self._health(now, state)
        body["previous"] = self.state
        self.state = state
        self.publisher.add(self._key("status"), json.dumps(body))

    def start(self):
        """The registry start and the status ``running`` (once)."""
        if self.state is not None:
            return
        now = time.time()
        self._registry("start", now)
        self._status("running", now)

    def alive(self):
        """An alive message, when one is due (first: at once)."""
        if self.stopped:
            return
        self.start()
        mono = time.monotonic()
        if self.next_alive is not None and mono < self.next_alive:
            return
        now = time.time()
        msg = (self._key("alive"), json.dumps(self._health(now, "running")))
        self.publisher.add(*msg, supersedes=self.pending_alive)
        self.pending_alive = msg
        self.last_alive = now
        # on a fixed grid (the interval said is the mean one), started again after a stall
        if self.next_alive is None or mono - self.next_alive >= self.interval:
            self.next_alive = mono + self.interval
        else:
            self.next_alive += self.interval

    def stop(self):
        """The status ``stopping``, then the registry stop (once)."""
        if self.stopped:
            return
        self.start()
        now = time.time()
        self._status("stopping", now)
        self._registry("stop", now)
        self.stopped = True


class _Half(FlowCB):
    def __init__(self, options):
        super().__init__(options, logger)
        self.o.add_option("ddmon_broker", "str", None)
        self.o.add_option("ddmon_exchange", "str", "log")
        self.o.add_option("ddmon_client", "str", None)
        self.o.add_option("ddmon_host", "str", None)
        self.o.add_option("ddmon_backlog", "count", 100000)
        self.o.add_option("ddmon_alive_interval", "duration", 30.0)
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
    ``flowCallbackPrepend``, before sr3's retry callback takes the failed ones); and this
    flow on ddmon's roster (registry, status, alive: once per process, this half only)."""

    def __init__(self, options):
        super().__init__(options)
        self.roster = _Roster(self.o, self.host, self.publisher)

    def on_start(self):
        self.roster.start()
        self.publisher.flush()

    def on_housekeeping(self):
        # a passive node (vip) runs no other hook: its alive comes from here
        self.roster.alive()
        super().on_housekeeping()

    def on_stop(self):
        self.roster.stop()
        super().on_stop()

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
        # sr3 calls after_work on every pass of the flow's loop, idle or not: the alive
        # comes from the loop that does the work
        self.roster.alive()
        self.publisher.flush()
