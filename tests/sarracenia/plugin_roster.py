"""Drive ddmon_report's roster messages (registry, status, alive) through the real broker.

Run with the sr3 virtual environment's python (scripts/python-venvs):

    plugin_roster.py PLUGIN_DIR BROKER_PORT [EXCHANGE]

The two halves are made as sr3 3.3.1 makes them (``Final`` then ``Start``, on one set of sr3
options: component ``subscribe``, config ``ddmon.roster#t*``, instance 7, ``sleep 0``,
``ddmon_alive_interval 1``) and their hooks called as sr3's flow loop calls them
(sarracenia/flow/__init__.py, Flow.run): ``on_start`` on the first pass, then on every pass
``after_accept`` and ``after_work`` (one transfer in the first pass, empty work lists after),
``on_housekeeping``, then ``on_stop``. A temporary exclusive queue bound to EXCHANGE with
``v01.alive.#``, ``v01.status.#`` and ``v01.registry.#`` must then hold, in order: the
registry start, the status ``running``, 3 alives about 1 s apart, the status ``stopping`` and
the registry stop, each with exactly its keys. Also checked without a broker: the alive
interval said is never less than what the flow's loop keeps (``sleep`` 0.1: 10 s; with a
``vip``: ``housekeeping``), and an alive still unsent is replaced by the next one.

EXCHANGE defaults to a new ``test.roster.<random>``; an exchange this script made is deleted
at the end (one that already existed belongs to the caller and is left). Prints one JSON line (the instance, the alive interval
and the messages seen, in order); exits non-zero on any failed check.
"""

import calendar
import importlib
import json
import logging
import os
import re
import sys
import time
import types
import uuid

import amqp

import sarracenia
import sarracenia.config

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
IDENT = {"tool", "instance", "host", "pid", "version", "alive_interval", "started", "time"}
REGISTRY = IDENT | {"event"}
ALIVE = IDENT | {"state", "uptime_s", "last_alive", "counters"}
STATUS = ALIVE | {"previous"}
HOST = "node01.roster.example"
CONFIG = "ddmon.roster#t*"
INSTANCE = "node01-subscribe_ddmon.roster#t*_07"
WORD = "node01-subscribe_ddmon%2Eroster%23t%2A_07"


def check(what, ok):
    if not ok:
        print("FAILED: " + what, file=sys.stderr)
        sys.exit(1)


def options(port, exchange, *lines, no=7):
    """sr3 options as a flow has them once its configuration is read."""
    o = sarracenia.config.no_file_config()
    conf = [
        "broker amqp://guest:guest@127.0.0.1:%d/" % port,
        "ddmon_exchange " + exchange,
        "ddmon_host " + HOST,
    ] + list(lines)
    for i, line in enumerate(conf, 1):
        o.parse_line("subscribe", CONFIG, CONFIG + ".conf", i, line)
    o.component, o.config, o.no = "subscribe", CONFIG, no
    return o


def worklist(incoming=(), ok=()):
    return types.SimpleNamespace(
        incoming=list(incoming), ok=list(ok), rejected=[], failed=[], directories_ok=[]
    )


def stamp(s):
    """Seconds since the epoch of an RFC 3339 ...Z stamp with milliseconds."""
    whole, ms = s[:-1].split(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + int(ms) / 1000


def offline(plugin, port, exchange):
    """What needs no broker: the interval said, and alives replaced while unsent."""
    for lines, want in (
        (["ddmon_alive_interval 1"], 10.0),  # sleep 0.1 (sr3's default): 6.4 s, slept as 10
        (["ddmon_alive_interval 1m"], 60.0),
        (["ddmon_alive_interval 1", "sleep 5"], 5.0),
        (["ddmon_alive_interval 1", "sleep 12"], 15.0),
        (["ddmon_alive_interval 1", "sleep 0", "vip 192.0.2.1", "housekeeping 20"], 20.0),
        (["ddmon_alive_interval 1", "sleep 0"], 1.0),
    ):
        f = plugin.Final(options(port, exchange, *lines))
        check("interval said for %s: %s, not %s" % (lines, f.roster.interval, want),
              f.roster.interval == want)
    # a publisher never flushed (as while its broker is away): one alive waits, the latest
    o = options(port, exchange, "ddmon_alive_interval 1", "sleep 0", no=8)
    f = plugin.Final(o)
    p = plugin._Publisher(f.publisher.url, exchange, 1000)
    r = plugin._Roster(f.o, f.host, p)
    p.add("v03.report.x", "{}")
    r.start()
    for _ in range(3):
        r.next_alive = None
        r.alive()
    r.stop()
    kinds = [k.split(".")[1] for k, _ in p.pending]
    check("offline: kept %s" % kinds,
          kinds == ["report", "registry", "status", "alive", "status", "registry"])
    alive = json.loads([b for k, b in p.pending if k.startswith("v01.alive.")][0])
    check("offline: the latest alive is kept", alive["last_alive"] is not None)
    check("offline: counters are the records' %s" % p.counters(),
          p.counters() == {"sent": 0, "pending": 1, "dropped": 0})


def main():
    plugin_dir, port = sys.argv[1], int(sys.argv[2])
    own_exchange = len(sys.argv) < 4
    exchange = "test.roster.%s" % uuid.uuid4().hex[:12] if own_exchange else sys.argv[3]
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(message)s")
    sys.path.insert(0, plugin_dir)
    sys.dont_write_bytecode = True  # no __pycache__ beside the plugin in the source tree
    plugin = importlib.import_module("ddmon_report")

    conn = amqp.Connection(host="127.0.0.1:%d" % port, userid="guest", password="guest")
    conn.connect()
    ch = conn.channel()
    got = []
    made = own_exchange  # an exchange this script made is deleted at the end
    try:
        try:
            ch.exchange_declare(exchange, "topic", passive=True)
        except amqp.exceptions.NotFound:
            ch = conn.channel()
            ch.exchange_declare(exchange, "topic", durable=True, auto_delete=False)
            made = True
        queue, _, _ = ch.queue_declare("", exclusive=True, auto_delete=True)
        for key in ("v01.alive.#", "v01.status.#", "v01.registry.#"):
            ch.queue_bind(queue, exchange, key)
        ch.basic_consume(queue, callback=got.append, no_ack=True)

        offline(plugin, port, exchange)

        # as sr3 loads them: flowCallbackPrepend ddmon_report.Final, flowCallback ...Start
        o = options(port, exchange, "ddmon_alive_interval 1", "sleep 0")
        halves = [plugin.Final(o), plugin.Start(o)]
        final, start = halves
        check("one roster, the Final's", hasattr(final, "roster") and not hasattr(start, "roster"))
        check("the instance %r" % final.roster.instance, final.roster.instance == INSTANCE)

        def hook(name, *args):
            for h in halves:
                if hasattr(h, name):
                    getattr(h, name)(*args)

        hook("on_start")
        msg = {"baseUrl": "http://src.example/", "relPath": "data/a.txt", "size": 3,
               "pubTime": "20261202T070000.000", "_deleteOnPost": set()}
        wl = worklist(incoming=[msg])
        hook("after_accept", wl)
        wl.ok, wl.incoming = wl.incoming, []
        hook("after_work", wl)
        deadline = time.monotonic() + 10
        passes = 1
        while final.roster.last_alive is None or final.publisher.own_sent < 5:
            # registry start + status + 3 alives sent
            check("3 alives within 10 s", time.monotonic() < deadline)
            time.sleep(0.05)
            wl = worklist()
            hook("after_accept", wl)
            hook("after_work", wl)
            passes += 1
        hook("on_housekeeping")
        hook("on_stop")

        deadline = time.monotonic() + 10
        while not any(m.delivery_info["routing_key"].endswith(".stop") for m in got):
            check("the registry stop arrives within 10 s", time.monotonic() < deadline)
            try:
                conn.drain_events(timeout=0.5)
            except TimeoutError:
                pass
        try:
            conn.drain_events(timeout=0.5)  # nothing more may come
        except TimeoutError:
            pass
    finally:
        if made:
            try:
                ch.exchange_delete(exchange)
            except Exception as ex:
                print("could not delete exchange %s: %s" % (exchange, ex), file=sys.stderr)
        conn.collect()

    keys = [m.delivery_info["routing_key"] for m in got]
    want_keys = (
        ["v01.registry.sr3.%s.start" % WORD, "v01.status.sr3." + WORD]
        + ["v01.alive.sr3." + WORD] * 3
        + ["v01.status.sr3." + WORD, "v01.registry.sr3.%s.stop" % WORD]
    )
    check("routing keys %s" % keys, keys == want_keys)
    for m in got:
        check("content type of %s: %s" % (m.delivery_info["routing_key"], m.content_type),
              m.content_type == "application/json")
    bodies = [json.loads(m.body) for m in got]
    reg_start, st_run, alives, st_stop, reg_stop = bodies[0], bodies[1], bodies[2:5], bodies[5], bodies[6]
    for name, b, keyset in [("registry start", reg_start, REGISTRY), ("registry stop", reg_stop, REGISTRY),
                            ("status running", st_run, STATUS), ("status stopping", st_stop, STATUS)] + \
                           [("alive %d" % i, a, ALIVE) for i, a in enumerate(alives)]:
        check("%s: keys %s" % (name, sorted(b)), set(b) == keyset)
        check("%s: identity %s" % (name, b),
              (b["tool"], b["instance"], b["host"], b["pid"], b["version"], b["alive_interval"])
              == ("sr3", INSTANCE, HOST, os.getpid(), "ddmon_report/" + sarracenia.__version__, 1.0)
              and type(b["pid"]) is int and type(b["alive_interval"]) is float)
        check("%s: times %s %s" % (name, b["started"], b["time"]),
              TIME.match(b["started"]) and TIME.match(b["time"])
              and b["started"] == reg_start["started"] and stamp(b["started"]) <= stamp(b["time"]) + 0.01
              and abs(stamp(b["time"]) - time.time()) < 60)
        if keyset is not REGISTRY:
            check("%s: uptime %s" % (name, b["uptime_s"]),
                  type(b["uptime_s"]) is float
                  and abs(b["uptime_s"] - (stamp(b["time"]) - stamp(b["started"]))) < 0.02)
            check("%s: counters %s" % (name, b["counters"]),
                  set(b["counters"]) == {"sent", "pending", "dropped"}
                  and all(type(v) is int for v in b["counters"].values()))
    check("events", (reg_start["event"], reg_stop["event"]) == ("start", "stop"))
    check("states", [b["state"] for b in bodies[1:6]] == ["running"] * 4 + ["stopping"])
    check("previous", (st_run["previous"], st_stop["previous"]) == (None, "running"))
    check("last_alive: the alive before",
          [b["last_alive"] for b in bodies[1:6]]
          == [None, None, alives[0]["time"], alives[1]["time"], alives[2]["time"]])
    gaps = [stamp(b["time"]) - stamp(a["time"]) for a, b in zip(alives, alives[1:])]
    check("alives 1 s apart: %s" % gaps, all(0.9 <= g <= 2.0 for g in gaps))
    # the transfer's 102 and 201 were sent with the first pass (the first alive was made
    # between them); by the stop, both sent
    check("counters at the stop %s" % st_stop["counters"],
          st_stop["counters"] == {"sent": 2, "pending": 0, "dropped": 0}
          and alives[-1]["counters"] == st_stop["counters"])
    check("order of times", [stamp(b["time"]) for b in bodies] == sorted(stamp(b["time"]) for b in bodies))
    names = [k.split(".")[1] + "." + (b.get("event") or b["state"]) for k, b in zip(keys, bodies)]
    print(json.dumps({"instance": INSTANCE, "alive_interval": alives[0]["alive_interval"],
                      "messages": names}))
    logging.info("plugin_roster: %d passes, alive gaps %s, exchange %s%s", passes,
                 ["%.3f" % g for g in gaps], exchange, " (deleted)" if made else "")


if __name__ == "__main__":
    main()
