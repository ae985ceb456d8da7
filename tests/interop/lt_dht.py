#!/usr/bin/python3
"""Private libtorrent DHT on loopback, driven by JSON lines on stdin.

Spawned by the Rust integration tests (and by hand for benchmarking).  Run it
with Debian's interpreter, which is the one the libtorrent bindings are
installed for:

    /usr/bin/python3 tests/interop/lt_dht.py --sessions 20 --base-ip 127.0.3.1
    /usr/bin/python3 tests/interop/lt_dht.py --single-node --base-ip 127.0.9.1 --port 7000

Protocol (one JSON object per line each way; every reply is flushed):

  first line  {"ready": true, "nodes": [{"ip", "port", "id"}, ...]}
              or {"ready": false, "error": "..."} followed by exit status 1.

  {"cmd":"add_node","session":i,"addr":"ip:port"}        -> {"ok": true}
  {"cmd":"announce","session":i,"info_hash":hex,"port":p} -> {"ok": true, "method", "port"}
  {"cmd":"get_peers","session":i,"info_hash":hex,"timeout":s[,"until_found":true]}
      -> {"ok": true, "peers": ["ip:port", ...], "elapsed_ms": n,
          "first_peer_ms": n|null, "lookups": n, "finished": bool}
  {"cmd":"routing_table","session":i}  -> {"ok": true, "id": hex, "nodes": [{"ip","port","id"}]}
  {"cmd":"stats","session":i}          -> {"ok": true, "routing_table": [...],
                                           "active_requests": [...], "counters": {...}}
  {"cmd":"quit"}                        -> {"ok": true, "bye": true}, then exit 0

Any failure is answered with {"ok": false, "error": "..."}; the process keeps going.
Every reply echoes the request's "id" field when the request has one.

The process exits when stdin reaches EOF, on SIGTERM/SIGINT, and (Linux) when
its parent dies (PR_SET_PDEATHSIG), so a crashed test never leaves it behind.
Every wait inside is bounded.  See README.md beside this file for the settings
and the measured reasons for them.
"""

import argparse
import ctypes
import ipaddress
import json
import os
import queue
import signal
import sys
import tempfile
import threading
import time

try:
    import libtorrent as lt
except ImportError as exc:  # pragma: no cover - depends on the machine
    sys.stdout.write(json.dumps({"ready": False, "error": "import libtorrent: %s" % exc}) + "\n")
    sys.stdout.flush()
    sys.exit(1)

CAT = lt.alert.category_t
BIG = 1 << 30
# Longest wait any single command may ask for, seconds.
MAX_TIMEOUT = 120.0
# How long to wait for the sessions to listen and start their DHT, seconds.
STARTUP_TIMEOUT = 20.0
# How long to wait for an alert answering an explicit request, seconds.
REQUEST_TIMEOUT = 5.0


def out(obj):
    """Write one JSON line on stdout and flush it."""
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def die_with_parent():
    """Ask the kernel to SIGTERM us when the parent process exits (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
        if os.getppid() == 1:
            os._exit(0)
    except Exception:  # noqa: BLE001 - best effort only
        pass


def parse_addr(text):
    """'ip:port' -> (ip, port)."""
    host, _, port = text.rpartition(":")
    if not host or not port:
        raise ValueError("bad addr %r, want ip:port" % text)
    return host.strip("[]"), int(port)


def parse_hash(text):
    """40 hex chars -> lt.sha1_hash."""
    raw = bytes.fromhex(text)
    if len(raw) != 20:
        raise ValueError("info_hash must be 20 bytes (40 hex chars)")
    return lt.sha1_hash(raw)


def parse_setting(text):
    """'name=value' -> (name, bool|int|str) for --set."""
    name, sep, val = text.partition("=")
    if not sep or not name:
        raise ValueError("--set wants NAME=VALUE, got %r" % text)
    low = val.lower()
    if low in ("true", "false"):
        return name, low == "true"
    try:
        return name, int(val, 0)
    except ValueError:
        return name, val


def settings_for(ip, port, single, bootstrap, extra=()):
    """The settings_pack dict for one session on ip:port (extra: (name, value) overrides)."""
    mask = CAT.error_notification | CAT.status_notification
    if not single:
        # dht: dht_live_nodes_alert; dht_operation: dht_get_peers_reply_alert.
        # Left out in --single-node mode: every incoming query would then allocate an alert.
        mask |= CAT.dht_notification | CAT.dht_operation_notification
    sp = {
        # An IPv6 address (BEP 32 tests in a network namespace) is bracketed.
        "listen_interfaces": ("[%s]:%d" if ":" in ip else "%s:%d") % (ip, port),
        "outgoing_interfaces": ip,
        "alert_mask": int(mask),
        "alert_queue_size": 100000,
        "enable_dht": True,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "allow_multiple_connections_per_ip": True,
        # Never the public routers.  Routers also never enter routing tables, so
        # sessions are wired with add_dht_node instead.
        "dht_bootstrap_nodes": bootstrap,
        # Off, or every 127.0.0.x shares one /24 and each table keeps 1 node.
        "dht_restrict_routing_ips": False,
        "dht_restrict_search_ips": False,
        "dht_enforce_node_id": False,
        "dht_prefer_verified_node_ids": False,
        "dht_ignore_dark_internet": False,
        # Default 5 packets/s per source IP, then a 5 minute block.
        "dht_block_ratelimit": 1000000,
        "dht_block_timeout": 1,
        # Default 8000 bytes/s of DHT replies.
        "dht_upload_rate_limit": BIG,
        "dht_max_peers_reply": 100,
        "dht_max_torrents": 100000,
        "dht_max_peers": 100000,
        "dht_max_dht_items": 100000,
        "dht_max_fail_count": 20,
        "active_dht_limit": 10000,
        "active_downloads": -1,
        "active_seeds": -1,
        "active_limit": -1,
        # libtorrent applies these to its UDP socket too; the kernel default
        # (~208 KiB) overflows under load and datagrams are dropped unseen.
        "recv_socket_buffer_size": 8 << 20,
        "send_socket_buffer_size": 8 << 20,
    }
    sp.update(dict(extra))
    return sp


def node_id_of(ses):
    """The session's current DHT node id as hex, or None before the DHT runs."""
    try:
        st = ses.save_state(lt.save_state_flags_t.save_dht_state)
    except (AttributeError, TypeError):
        st = ses.save_state()
    dht = st.get(b"dht state") or {}
    ids = dht.get(b"node-id")
    if isinstance(ids, list):
        ids = ids[0] if ids else None
    if not ids or len(ids) < 20:
        return None
    return ids[:20].hex()


class Session:
    """One libtorrent session plus the alerts collected for it."""

    def __init__(self, ip, port, single, bootstrap, save_dir, extra=()):
        self.ip = ip
        self.ses = lt.session(settings_for(ip, port, single, bootstrap, extra))
        self.udp_port = None
        self.save_dir = save_dir
        self.peers = {}  # info_hash hex -> list of (time, "ip:port")
        self.live_nodes = []  # dht_live_nodes_alert payloads
        self.dht_stats = []  # (routing_table, active_requests)
        self.session_stats = []  # dicts of counters
        self.errors = []
        self.torrents = {}  # info_hash hex -> torrent_handle (announce fallback)

    def pump(self):
        """Pop and file this session's alerts."""
        for a in self.ses.pop_alerts():
            if isinstance(a, lt.dht_get_peers_reply_alert):
                key = str(a.info_hash)
                now = time.monotonic()
                lst = self.peers.setdefault(key, [])
                for ip, port in a.peers():
                    lst.append((now, "%s:%d" % (ip, port)))
            elif isinstance(a, lt.dht_live_nodes_alert):
                self.live_nodes.append((str(a.node_id), a.nodes))
            elif isinstance(a, lt.dht_stats_alert):
                self.dht_stats.append((a.routing_table, a.active_requests))
            elif isinstance(a, lt.session_stats_alert):
                self.session_stats.append(a.values)
            elif isinstance(a, lt.listen_succeeded_alert):
                if a.socket_type in (lt.socket_type_t.udp, lt.socket_type_t.utp):
                    self.udp_port = a.port
            elif isinstance(a, (lt.listen_failed_alert,)):
                self.errors.append(a.message())

    def port(self):
        """The UDP (DHT) port, falling back to the TCP listen port (they match)."""
        return self.udp_port or self.ses.listen_port()


class JsonLineServer:
    """The JSON-lines command loop both harnesses share: stdin lines are read on a thread,
    each request `{"cmd": NAME, ...}` is answered by the subclass's `cmd_NAME(req)` with one
    JSON line, alerts are pumped while idle, and EOF or `quit` ends the process. Subclasses
    provide `lines` (a queue), `eof` (an Event), `start()` and `pump()`."""

    # Alert polling interval: 1 ms is fine enough to time a loopback lookup.
    POLL = 0.001

    def reader(self):
        """Thread: stdin lines -> queue; EOF -> exit flag."""
        try:
            for line in sys.stdin:
                self.lines.put(line)
        finally:
            self.eof.set()
            self.lines.put(None)


    def handle(self, line):
        """Parse one request line and produce its reply dict."""
        try:
            req = json.loads(line)
        except ValueError as exc:
            return {"ok": False, "error": "bad json: %s" % exc}
        if not isinstance(req, dict):
            return {"ok": False, "error": "request must be a JSON object"}
        cmd = req.get("cmd")
        try:
            if cmd == "quit":
                rep = {"bye": True}
            else:
                fn = getattr(self, "cmd_%s" % cmd, None) if isinstance(cmd, str) else None
                if fn is None:
                    raise ValueError("unknown cmd %r" % (cmd,))
                rep = fn(req)
            rep = dict({"ok": True}, **rep)
        except Exception as exc:  # noqa: BLE001 - report, keep serving
            rep = {"ok": False, "error": "%s: %s" % (type(exc).__name__, exc)}
        if "id" in req:
            rep["id"] = req["id"]
        rep.setdefault("cmd", cmd)
        return rep

    def run(self):
        """Start, then serve commands until quit / EOF."""
        threading.Thread(target=self.reader, daemon=True).start()
        self.start()
        while True:
            try:
                line = self.lines.get(timeout=0.05)
            except queue.Empty:
                self.pump()
                continue
            if line is None:
                self.exit(0)
            line = line.strip()
            if not line:
                continue
            rep = self.handle(line)
            out(rep)
            if rep.get("bye"):
                self.exit(0)

    def sleep(self, secs):
        """Sleep up to secs while pumping alerts; exits the process on stdin EOF."""
        deadline = time.monotonic() + secs
        while True:
            self.pump()
            if self.eof.is_set() and self.lines.empty():
                self.exit(0)
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(self.POLL, left))

    def wait_for(self, pred, timeout):
        """Pump until pred() is truthy or timeout; returns pred()'s last value."""
        deadline = time.monotonic() + timeout
        while True:
            v = pred()
            if v or time.monotonic() >= deadline:
                return v
            self.sleep(0.01)

    def exit(self, code):
        """Leave immediately: session destructors can block, nothing needs saving."""
        try:
            sys.stdout.flush()
        finally:
            os._exit(code)


class Harness(JsonLineServer):
    """All sessions plus the command loop."""

    def __init__(self, args):
        self.args = args
        self.lines = queue.Queue()
        self.eof = threading.Event()
        self.save_dir = tempfile.mkdtemp(prefix="lt_dht_")
        base = ipaddress.IPv4Address(args.base_ip)
        n = 1 if args.single_node else args.sessions
        self.sessions = [
            Session(str(base + i), args.port, args.single_node, args.bootstrap, self.save_dir,
                    [parse_setting(x) for x in args.set or []])
            for i in range(n)
        ]

    # ----- plumbing -------------------------------------------------------------

    def pump(self):
        """Pop alerts of every session."""
        for s in self.sessions:
            s.pump()

    # ----- startup --------------------------------------------------------------

    def start(self):
        """Wait for every session to listen and run its DHT, wire them, say ready."""
        def all_up():
            return all(s.port() and s.ses.is_dht_running() and node_id_of(s.ses) for s in self.sessions)

        if not self.wait_for(all_up, STARTUP_TIMEOUT):
            errs = [e for s in self.sessions for e in s.errors]
            out({"ready": False, "error": "sessions did not start", "details": errs[:10]})
            self.exit(1)
        if not self.args.single_node:
            n = len(self.sessions)
            for i, s in enumerate(self.sessions):
                if self.args.wire == "full":
                    peers = [j for j in range(n) if j != i]
                else:  # star + ring: hub 0, and each to its predecessor
                    peers = sorted({0, (i - 1) % n} - {i})
                for j in peers:
                    t = self.sessions[j]
                    s.ses.add_dht_node((t.ip, t.port()))
        for a in self.args.add_node or []:
            for s in self.sessions:
                s.ses.add_dht_node(parse_addr(a))
        out({
            "ready": True,
            "nodes": [{"ip": s.ip, "port": s.port(), "id": node_id_of(s.ses)} for s in self.sessions],
        })

    # ----- commands -------------------------------------------------------------

    def session(self, req):
        """The Session a request names."""
        i = int(req.get("session", 0))
        if not 0 <= i < len(self.sessions):
            raise ValueError("no session %d (have %d)" % (i, len(self.sessions)))
        return self.sessions[i]

    def cmd_add_node(self, req):
        """add_dht_node((ip, port)) on one session."""
        s = self.session(req)
        s.ses.add_dht_node(parse_addr(req["addr"]))
        return {}

    def cmd_announce(self, req):
        """Announce info_hash from one session.

        session.dht_announce() cannot be called from the 2.0.8 bindings (there is
        no converter for its dht_announce_flag_t argument), so when it fails the
        session adds a metadata-less torrent for the info_hash instead; libtorrent
        then DHT-announces it with the session's listen port (explicit port, since
        uTP is off).  The reply says which method ran and which port is announced.
        """
        s = self.session(req)
        ih = parse_hash(req["info_hash"])
        port = int(req.get("port") or s.port())
        method = req.get("method", "auto")
        if method in ("auto", "dht_announce"):
            try:
                s.ses.dht_announce(ih, port, 0)
                return {"method": "dht_announce", "port": port}
            except TypeError as exc:  # Boost.Python.ArgumentError
                if method == "dht_announce":
                    raise ValueError("dht_announce not callable: %s" % exc) from None
        key = str(ih)
        if key not in s.torrents:
            atp = lt.add_torrent_params()
            atp.info_hashes = lt.info_hash_t(ih)
            atp.save_path = os.path.join(s.save_dir, key)
            atp.name = key
            tf = lt.torrent_flags
            atp.flags = (atp.flags & ~tf.auto_managed & ~tf.paused) | tf.upload_mode
            s.torrents[key] = s.ses.add_torrent(atp)
        else:
            s.torrents[key].force_dht_announce()
        return {"method": "torrent", "port": s.ses.listen_port(), "requested_port": port}

    def lookup_running(self, s):
        """True while the session has a get_peers lookup in flight (via dht_stats)."""
        before = len(s.dht_stats)
        s.ses.post_dht_stats()
        if not self.wait_for(lambda: len(s.dht_stats) > before, REQUEST_TIMEOUT):
            return True  # unknown: assume still running, the timeout bounds us
        _rt, active = s.dht_stats[-1]
        return any(r.get("type") in ("get_peers", "obfuscated_get_peers") for r in active)

    def cmd_get_peers(self, req):
        """dht_get_peers from one session, collecting replies until done/timeout."""
        s = self.session(req)
        ih = parse_hash(req["info_hash"])
        key = str(ih)
        timeout = min(float(req.get("timeout", 10)), MAX_TIMEOUT)
        until_found = bool(req.get("until_found", False))
        s.peers.pop(key, None)
        t0 = time.monotonic()
        deadline = t0 + timeout
        lookups = 0
        finished = False
        while True:
            s.ses.dht_get_peers(ih)
            lookups += 1
            finished = False
            while time.monotonic() < deadline:
                self.sleep(min(0.005, max(0.0, deadline - time.monotonic())))
                if not self.lookup_running(s):
                    finished = True
                    break
            found = bool(s.peers.get(key))
            if found or not until_found or time.monotonic() >= deadline:
                break
            self.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        got = s.peers.get(key, [])
        uniq = []
        for _t, p in got:
            if p not in uniq:
                uniq.append(p)
        first = round((got[0][0] - t0) * 1000) if got else None
        return {
            "peers": uniq,
            "elapsed_ms": round((time.monotonic() - t0) * 1000),
            "first_peer_ms": first,
            "lookups": lookups,
            "finished": finished,
        }

    def cmd_routing_table(self, req):
        """The session's live routing-table nodes (dht_live_nodes)."""
        s = self.session(req)
        nid = node_id_of(s.ses)
        if nid is None:
            raise ValueError("DHT not running")
        before = len(s.live_nodes)
        s.ses.dht_live_nodes(lt.sha1_hash(bytes.fromhex(nid)))
        if not self.wait_for(lambda: len(s.live_nodes) > before, REQUEST_TIMEOUT):
            raise ValueError("no dht_live_nodes_alert within %.0fs" % REQUEST_TIMEOUT)
        _own, nodes = s.live_nodes[-1]
        return {
            "id": nid,
            "nodes": [
                {"ip": n["endpoint"][0], "port": n["endpoint"][1], "id": str(n["nid"])}
                for n in nodes
            ],
        }

    def cmd_stats(self, req):
        """dht_stats_alert (buckets, lookups) plus the session's dht.* counters."""
        s = self.session(req)
        b1, b2 = len(s.dht_stats), len(s.session_stats)
        s.ses.post_dht_stats()
        s.ses.post_session_stats()
        self.wait_for(lambda: len(s.dht_stats) > b1 and len(s.session_stats) > b2, REQUEST_TIMEOUT)
        rep = {"id": node_id_of(s.ses), "port": s.port()}
        if len(s.dht_stats) > b1:
            rt, active = s.dht_stats[-1]
            rep["routing_table"] = rt
            rep["routing_table_nodes"] = sum(b["num_nodes"] for b in rt)
            rep["active_requests"] = active
        if len(s.session_stats) > b2:
            vals = s.session_stats[-1]
            rep["counters"] = {k: v for k, v in vals.items() if k.startswith("dht.")}
        return rep



def main():
    """Entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=1, help="number of sessions (default 1)")
    ap.add_argument("--base-ip", default="127.0.3.1", help="address of session 0; the rest count up")
    ap.add_argument("--port", type=int, default=0, help="fixed port for every session (0 = pick)")
    ap.add_argument("--single-node", action="store_true",
                    help="benchmark mode: one session, limits raised, no per-query alerts")
    ap.add_argument("--wire", choices=("full", "star"), default="full",
                    help="full: every session add_dht_node's every other; star: hub 0 + ring")
    ap.add_argument("--add-node", action="append", metavar="IP:PORT",
                    help="also add_dht_node this address on every session (repeatable)")
    ap.add_argument("--bootstrap", default="",
                    help="dht_bootstrap_nodes value (default empty: no routers, never the public ones)")
    ap.add_argument("--set", action="append", metavar="NAME=VALUE",
                    help="extra settings_pack entry for every session (repeatable; int/true/false/str)")
    args = ap.parse_args()
    if args.sessions < 1 or args.sessions > 1000:
        ap.error("--sessions must be 1..1000")
    die_with_parent()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: os._exit(0))
    try:
        Harness(args).run()
    except Exception as exc:  # noqa: BLE001 - always say something on stdout
        out({"ready": False, "error": "%s: %s" % (type(exc).__name__, exc)})
        os._exit(1)


if __name__ == "__main__":
    main()
