#!/usr/bin/python3
"""One libtorrent session on loopback that seeds or downloads torrents (trackerless by
default; with "trackers", announced to those trackers, and with --no-dht, through them only).

Driven by JSON lines on stdin, like lt_dht.py beside it (whose settings it reuses), and
spawned by tests/interop_transfer.rs.  Run it with Debian's interpreter:

    /usr/bin/python3 tests/interop/lt_torrent.py --ip 127.96.0.100 --add-node 127.96.0.1:6881

Protocol (one JSON object per line each way; every line is flushed):

  first line  {"ready": true, "ip", "port", "id"}
              or {"ready": false, "error": "..."} followed by exit status 1.

  {"cmd":"add_node","addr":"ip:port"}                            -> {}
  {"cmd":"seed","path":p[,"piece_size":n][,"torrent_out":f]
         [,"wait_announced":true][,"timeout":s][,"upload_limit":bytes_per_s]
         [,"trackers":[url,...]][,"wait_tracker":true][,"torrent":f][,"hybrid":true]}
      -> {"info_hash","name","bytes","pieces","piece_size","port","announced_ms",
          "tracker_ms"}
      "torrent" seeds that .torrent (data at path) instead of building one;
      "trackers" are written into the torrent (one tier each) and announced to; with
      "wait_tracker" the reply waits for the first tracker_reply_alert (tracker_ms).
  {"cmd":"download","info_hash":hex,"save_path":dir[,"timeout":s][,"peers":["ip:port"]]
         [,"info_hash_v2":hex64 (a hybrid known by both hashes)][,"torrent":f (the .torrent)]
         [,"upload_limit":bytes_per_s][,"background":true][,"trackers":[url,...]]}
      -> progress lines {"event":"progress","info_hash","state","progress","pieces",
                         "num_peers","download_rate"} about once a second, then
         {"finished": true, "name", "bytes", "elapsed_ms", "metadata_ms", "num_peers"}
         as soon as the torrent completes (torrent_finished, then its cache flushed).
      With "background": the reply {"started": true, "info_hash"} comes at once, the command
      loop keeps serving (peers, stats, ...), and the same finished object comes later as an
      event line {"event": "finished", "cmd": "download", "finished": true, ...}; a torrent
      that has not finished within timeout gives {"event": "finished", "finished": false,
      "error": ...}.  Either way the torrent stays in the session afterwards and keeps
      seeding, like a real client, until the process quits.
  {"cmd":"peers","info_hash":hex}
      -> {"peers": [{"addr": "ip:port", "ip", "port", "total_download", "total_upload",
                     "client", "seed", "progress", "source": [...], "payload_down_speed",
                     "payload_up_speed"}, ...]}   (connected peers; byte counts are payload)
  {"cmd":"stats","info_hash":hex}
      -> {"state", "progress", "is_seeding", "finished", "num_peers", "total_upload",
          "all_time_upload", "total_payload_upload", "total_download", "all_time_download",
          "total_payload_download", "upload_rate", "download_rate", "upload_limit"}
  {"cmd":"get_peers","info_hash":hex[,"timeout":s]} -> {"peers": ["ip:port", ...]}
  {"cmd":"status","info_hash":hex}     -> {"state","progress","pieces","num_peers"}
  {"cmd":"quit"}                        -> {"bye": true}, then exit 0

Every reply carries "ok" and "cmd" and echoes the request's "id"; a failure is
{"ok": false, "error": "..."} and the process keeps serving.  It exits when stdin
reaches EOF, on SIGTERM/SIGINT/SIGHUP, and when its parent dies.  Every wait is bounded.
"""

import argparse
import json
import os
import queue
import signal
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

try:
    import libtorrent as lt
    # Same loopback settings as the DHT harness (see README.md for why each one).
    from lt_dht import (JsonLineServer, die_with_parent, node_id_of, out, parse_addr,
                        parse_hash, parse_setting, settings_for)
except ImportError as exc:  # pragma: no cover - depends on the machine
    sys.stdout.write(json.dumps({"ready": False, "error": "import: %s" % exc}) + "\n")
    sys.stdout.flush()
    sys.exit(1)

CAT = lt.alert.category_t
# Longest wait any single command may ask for, seconds.
MAX_TIMEOUT = 300.0
STARTUP_TIMEOUT = 20.0
# Waits for one alert answering an explicit request, seconds.
REQUEST_TIMEOUT = 5.0

STATE_NAMES = {
    0: "queued_for_checking", 1: "checking_files", 2: "downloading_metadata",
    3: "downloading", 4: "finished", 5: "seeding", 6: "allocating",
    7: "checking_resume_data",
}


def set_limit(h, req):
    """Cap one torrent's upload rate when the request has "upload_limit" (bytes/s)."""
    if req.get("upload_limit"):
        h.set_upload_limit(int(req["upload_limit"]))


def state_name(st):
    """torrent_status.state as a string."""
    try:
        return STATE_NAMES.get(int(st.state), str(st.state))
    except (TypeError, ValueError):
        return str(st.state)


class Harness(JsonLineServer):
    """One session, its torrents, and the command loop."""

    POLL = 0.01

    def __init__(self, args):
        self.args = args
        self.ip = args.ip
        self.lines = queue.Queue()
        self.eof = threading.Event()
        self.tmp = tempfile.mkdtemp(prefix="lt_torrent_")
        extra = [
            # Torrent alerts on top of the DHT ones: torrent_finished, metadata_received,
            # state changes (status), cache_flushed (storage), listen (status).
            ("alert_mask", int(CAT.error_notification | CAT.status_notification
                               | CAT.storage_notification | CAT.dht_notification
                               | CAT.dht_operation_notification
                               | CAT.tracker_notification)),
            # Let a torrent announce as soon as the DHT has nodes.
            ("dht_announce_interval", 60),
        ]
        if args.no_dht:
            # Peers come from trackers (or explicit peers) only.
            extra.append(("enable_dht", False))
        extra += [parse_setting(x) for x in args.set or []]
        self.ses = lt.session(settings_for(self.ip, args.port, False, args.bootstrap, extra))
        self.udp_port = None
        self.errors = []
        self.torrents = {}  # info_hash hex -> torrent_handle
        self.finished = set()  # info_hash hex of torrent_finished_alert
        self.metadata_at = {}  # info_hash hex -> monotonic time of metadata_received_alert
        self.flushed = set()  # info_hash hex of cache_flushed_alert
        self.failures = {}  # info_hash hex -> list of error messages
        self.peers = {}  # info_hash hex -> list of "ip:port" from dht_get_peers replies
        self.finished_at = {}  # info_hash hex -> monotonic time of torrent_finished_alert
        self.background = {}  # info_hash hex -> state of a "background" download
        self.tracker_replies = {}  # info_hash hex -> monotonic time of first tracker_reply_alert
        self.tracker_errors = {}  # info_hash hex -> tracker error messages

    # ----- plumbing -------------------------------------------------------------

    def pump(self):
        """Pop and file the session's alerts."""
        for a in self.ses.pop_alerts():
            key = None
            h = getattr(a, "handle", None)
            if h is not None:
                try:
                    if h.is_valid():
                        key = str(h.info_hashes().v1)
                except Exception:  # noqa: BLE001 - alerts without a torrent
                    key = None
            if isinstance(a, lt.torrent_finished_alert):
                self.finished.add(key)
                self.finished_at.setdefault(key, time.monotonic())
            elif isinstance(a, lt.tracker_reply_alert):
                self.tracker_replies.setdefault(key, time.monotonic())
            elif isinstance(a, (lt.tracker_error_alert, lt.tracker_warning_alert)):
                self.tracker_errors.setdefault(key, []).append(a.message())
            elif isinstance(a, lt.metadata_received_alert):
                self.metadata_at.setdefault(key, time.monotonic())
            elif isinstance(a, lt.cache_flushed_alert):
                self.flushed.add(key)
            elif isinstance(a, lt.dht_get_peers_reply_alert):
                lst = self.peers.setdefault(str(a.info_hash), [])
                for ip, port in a.peers():
                    p = "%s:%d" % (ip, port)
                    if p not in lst:
                        lst.append(p)
            elif isinstance(a, lt.listen_succeeded_alert):
                if a.socket_type in (lt.socket_type_t.udp, lt.socket_type_t.utp):
                    self.udp_port = a.port
            elif isinstance(a, (lt.listen_failed_alert,)):
                self.errors.append(a.message())
            elif isinstance(a, (lt.torrent_error_alert, lt.file_error_alert,
                                lt.metadata_failed_alert)):
                self.failures.setdefault(key, []).append(a.message())
        if self.background:
            self.tick_background()

    def port(self):
        """The listen port (TCP and UDP share it)."""
        return self.udp_port or self.ses.listen_port()

    def start(self):
        """Wait for the session to listen and run its DHT, add nodes, say ready."""
        dht = not self.args.no_dht
        ok = self.wait_for(lambda: self.port() and (not dht or (
            self.ses.is_dht_running() and node_id_of(self.ses))), STARTUP_TIMEOUT)
        if not ok:
            out({"ready": False, "error": "session did not start", "details": self.errors[:10]})
            self.exit(1)
        for a in self.args.add_node or []:
            self.ses.add_dht_node(parse_addr(a))
        out({"ready": True, "ip": self.ip, "port": self.port(),
             "id": node_id_of(self.ses) if dht else None})

    # ----- commands -------------------------------------------------------------

    def timeout_of(self, req, default):
        """The request's timeout, capped."""
        return min(float(req.get("timeout", default)), MAX_TIMEOUT)

    def cmd_add_node(self, req):
        """add_dht_node((ip, port))."""
        self.ses.add_dht_node(parse_addr(req["addr"]))
        return {}

    def dht_lookup(self, ih, timeout):
        """One dht_get_peers(ih); waits up to timeout for replies; returns peers seen."""
        key = str(ih)
        self.peers.pop(key, None)
        self.ses.dht_get_peers(ih)
        self.wait_for(lambda: self.peers.get(key), timeout)
        return list(self.peers.get(key, []))

    def cmd_get_peers(self, req):
        """dht_get_peers, collecting replies for up to timeout seconds."""
        ih = parse_hash(req["info_hash"])
        timeout = self.timeout_of(req, 5)
        key = str(ih)
        self.peers.pop(key, None)
        self.ses.dht_get_peers(ih)
        self.sleep(timeout)
        return {"peers": list(self.peers.get(key, []))}

    def cmd_seed(self, req):
        """Build a trackerless v1 torrent from path and seed it from there.

        The data is already in place, so the torrent is added in seed_mode (pieces are
        checked lazily when first requested).  With wait_announced, the session's own
        dht_get_peers is repeated until its own ip:port comes back, i.e. the DHT
        announce has been stored by some node.
        """
        path = os.path.abspath(req["path"])
        if not os.path.exists(path):
            raise ValueError("%s does not exist" % path)
        timeout = self.timeout_of(req, 30)
        parent = os.path.dirname(path)
        if req.get("torrent"):
            # A .torrent made elsewhere whose data is at path.
            with open(req["torrent"], "rb") as f:
                raw = f.read()
        else:
            fs = lt.file_storage()
            lt.add_files(fs, path)
            if fs.num_files() == 0:
                raise ValueError("no files under %s" % path)
            # "hybrid": a BEP 52 v1+v2 torrent, with BEP 47 padding files between files.
            flags = 0 if req.get("hybrid") else lt.create_torrent.v1_only
            ct = lt.create_torrent(fs, int(req.get("piece_size", 0)), flags=flags)
            ct.set_creator("lt_torrent.py")
            for tier, url in enumerate(req.get("trackers") or []):
                ct.add_tracker(url, tier)
            lt.set_piece_hashes(ct, parent)
            raw = lt.bencode(ct.generate())
            if req.get("torrent_out"):
                with open(req["torrent_out"], "wb") as f:
                    f.write(raw)
        ti = lt.torrent_info(lt.bdecode(raw))
        atp = lt.add_torrent_params()
        atp.ti = ti
        atp.save_path = parent
        tf = lt.torrent_flags
        atp.flags = (atp.flags & ~tf.auto_managed & ~tf.paused) | tf.seed_mode
        h = self.ses.add_torrent(atp)
        set_limit(h, req)
        ih = ti.info_hashes().v1
        key = str(ih)
        self.torrents[key] = h
        t0 = time.monotonic()
        seeding = self.wait_for(lambda: h.status().is_seeding, timeout)
        if not seeding:
            raise ValueError("not seeding after %.0fs: %s %s" % (
                timeout, state_name(h.status()), self.failures.get(key, [])))
        rep = {
            "info_hash": key,
            "name": ti.name(),
            "bytes": ti.total_size(),
            "pieces": ti.num_pieces(),
            "piece_size": ti.piece_length(),
            "port": self.port(),
            "announced_ms": None,
            "tracker_ms": None,
        }
        if req.get("wait_tracker"):
            if not self.wait_for(lambda: key in self.tracker_replies, timeout):
                raise ValueError("no tracker reply for %s within %.0fs: %s" % (
                    key, timeout, self.tracker_errors.get(key, [])))
            rep["tracker_ms"] = round((self.tracker_replies[key] - t0) * 1000)
        if req.get("wait_announced"):
            me = "%s:%d" % (self.ip, self.port())
            deadline = t0 + timeout
            while time.monotonic() < deadline:
                h.force_dht_announce()
                left = max(0.0, deadline - time.monotonic())
                if me in self.dht_lookup(ih, min(1.0, left)):
                    rep["announced_ms"] = round((time.monotonic() - t0) * 1000)
                    break
            if rep["announced_ms"] is None:
                raise ValueError("own announce of %s not visible in the DHT after %.0fs" % (
                    key, timeout))
        return rep

    def progress_line(self, key, h):
        """One progress event for a torrent."""
        st = h.status()
        out({
            "event": "progress",
            "info_hash": key,
            "state": state_name(st),
            "progress": round(st.progress, 4),
            "pieces": st.num_pieces,
            "num_peers": st.num_peers,
            "download_rate": st.download_rate,
        })

    def add_download(self, req):
        """Add a torrent known only by its info-hash (metadata from peers, BEP 9)."""
        ih = parse_hash(req["info_hash"])
        key = str(ih)
        save = os.path.abspath(req["save_path"])
        os.makedirs(save, exist_ok=True)
        atp = lt.add_torrent_params()
        if req.get("torrent"):
            # The whole .torrent (a hybrid's piece layers included): no metadata exchange.
            atp.ti = lt.torrent_info(os.path.abspath(req["torrent"]))
        elif req.get("info_hash_v2"):
            # A BEP 52 hybrid known by both hashes (a magnet with btih and btmh).
            atp.info_hashes = lt.info_hash_t(ih, lt.sha256_hash(bytes.fromhex(req["info_hash_v2"])))
        else:
            atp.info_hashes = lt.info_hash_t(ih)
        atp.save_path = save
        if req.get("trackers"):
            atp.trackers = list(req["trackers"])
        tf = lt.torrent_flags
        atp.flags = atp.flags & ~tf.auto_managed & ~tf.paused
        h = self.ses.add_torrent(atp)
        set_limit(h, req)
        self.torrents[key] = h
        for p in req.get("peers") or []:
            h.connect_peer(parse_addr(p))
        return key, h

    def finished_reply(self, key, h, t0, max_peers):
        """The reply/event describing a finished download (after its cache is flushed)."""
        st = h.status()
        elapsed = self.finished_at.get(key, time.monotonic()) - t0
        ti = h.torrent_file()
        meta = self.metadata_at.get(key)
        return {
            "finished": True,
            "info_hash": key,
            "name": ti.name() if ti else None,
            "bytes": ti.total_size() if ti else None,
            "pieces": ti.num_pieces() if ti else None,
            "elapsed_ms": round(elapsed * 1000),
            "metadata_ms": round((meta - t0) * 1000) if meta else None,
            "num_peers": max(max_peers, st.num_peers),
            "total_payload_upload": st.total_payload_upload,
            "total_payload_download": st.total_payload_download,
        }

    def not_finished(self, key, h, t0):
        """The error text of a download that did not finish in time (or failed)."""
        st = h.status()
        # What the DHT says now, so a stalled download tells whether the seed was findable.
        try:
            seen = self.dht_lookup(parse_hash(key), 3.0)
        except Exception as e:  # diagnostics only: never hide the real failure
            seen = ["lookup failed: %s" % e]
        return ("not finished after %.1fs: state=%s progress=%.3f peers=%d errors=%s"
                " tracker errors=%s dht_nodes=%d dht peers now=%s") % (
            time.monotonic() - t0, state_name(st), st.progress, st.num_peers,
            self.failures.get(key, []), self.tracker_errors.get(key, [])[:5],
            self.ses.status().dht_nodes, seen[:8])

    def cmd_download(self, req):
        """Download a torrent knowing only its info-hash; blocks until it finishes unless
        "background" is set (then tick_background reports the finish as an event)."""
        timeout = self.timeout_of(req, 60)
        t0 = time.monotonic()
        key, h = self.add_download(req)
        if req.get("background"):
            self.background[key] = {"h": h, "t0": t0, "deadline": t0 + timeout,
                                    "max_peers": 0, "last": t0, "flush_until": None}
            return {"started": True, "info_hash": key}
        deadline = t0 + timeout
        last = 0.0
        max_peers = 0
        while key not in self.finished and time.monotonic() < deadline:
            if self.failures.get(key):
                break
            max_peers = max(max_peers, h.status().num_peers)
            if time.monotonic() - last >= 1.0:
                last = time.monotonic()
                self.progress_line(key, h)
            self.sleep(0.02)
        if key not in self.finished:
            raise ValueError(self.not_finished(key, h, t0))
        # Make sure every byte has reached the files before the caller reads them.
        h.flush_cache()
        self.wait_for(lambda: key in self.flushed, REQUEST_TIMEOUT)
        return self.finished_reply(key, h, t0, max_peers)

    def tick_background(self):
        """Progress and finish events of background downloads (called from pump)."""
        now = time.monotonic()
        for key, b in list(self.background.items()):
            h = b["h"]
            if b["flush_until"] is not None:
                if key in self.flushed or now >= b["flush_until"]:
                    del self.background[key]
                    rep = self.finished_reply(key, h, b["t0"], b["max_peers"])
                    out(dict({"event": "finished"}, **rep))
                continue
            b["max_peers"] = max(b["max_peers"], h.status().num_peers)
            if key in self.finished:
                self.flushed.discard(key)
                h.flush_cache()
                b["flush_until"] = now + REQUEST_TIMEOUT
            elif self.failures.get(key) or now >= b["deadline"]:
                del self.background[key]
                out({"event": "finished", "finished": False, "info_hash": key,
                     "error": self.not_finished(key, h, b["t0"])})
            elif now - b["last"] >= 1.0:
                b["last"] = now
                self.progress_line(key, h)

    def handle_of(self, req):
        """(info-hash hex, torrent_handle) a request names."""
        key = str(parse_hash(req["info_hash"]))
        h = self.torrents.get(key)
        if h is None:
            raise ValueError("no torrent %s" % key)
        return key, h

    def cmd_peers(self, req):
        """The torrent's connected peers with payload bytes each way (get_peer_info)."""
        key, h = self.handle_of(req)
        st = h.status()
        peers = []
        for p in h.get_peer_info():
            ip, port = p.ip
            client = p.client
            if isinstance(client, bytes):
                client = client.decode("utf-8", "replace")
            peers.append({
                "addr": "%s:%d" % (ip, port),
                "ip": ip,
                "port": port,
                "total_download": p.total_download,
                "total_upload": p.total_upload,
                "payload_down_speed": p.payload_down_speed,
                "payload_up_speed": p.payload_up_speed,
                "client": client,
                "seed": bool(p.flags & lt.peer_info.seed),
                "progress": round(p.progress, 4),
                "source": [n for n in ("tracker", "dht", "pex", "lsd", "resume_data", "incoming")
                           if p.source & getattr(lt.peer_info, n, 0)],
            })
        return {"info_hash": key, "progress": st.progress, "is_seeding": st.is_seeding,
                "finished": key in self.finished, "peers": peers}

    def cmd_stats(self, req):
        """Upload/download totals and progress of one torrent."""
        key, h = self.handle_of(req)
        st = h.status()
        return {
            "info_hash": key,
            "state": state_name(st),
            "progress": st.progress,
            "is_seeding": st.is_seeding,
            "finished": key in self.finished,
            "num_peers": st.num_peers,
            "total_upload": st.total_upload,
            "all_time_upload": st.all_time_upload,
            "total_payload_upload": st.total_payload_upload,
            "total_download": st.total_download,
            "all_time_download": st.all_time_download,
            "total_payload_download": st.total_payload_download,
            "upload_rate": st.upload_rate,
            "download_rate": st.download_rate,
            "upload_limit": h.upload_limit(),
        }

    def cmd_status(self, req):
        """Status of one torrent."""
        key, h = self.handle_of(req)
        st = h.status()
        return {"state": state_name(st), "progress": st.progress, "pieces": st.num_pieces,
                "num_peers": st.num_peers, "finished": key in self.finished}


def main():
    """Entry point."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ip", default="127.0.4.1", help="the session's loopback address")
    ap.add_argument("--port", type=int, default=0, help="listen port, TCP and UDP (0 = pick)")
    ap.add_argument("--add-node", action="append", metavar="IP:PORT",
                    help="add_dht_node this DHT node at startup (repeatable)")
    ap.add_argument("--bootstrap", default="",
                    help="dht_bootstrap_nodes value (default empty: never the public routers)")
    ap.add_argument("--no-dht", action="store_true",
                    help="run without the DHT (peers from trackers or given peers only)")
    ap.add_argument("--set", action="append", metavar="NAME=VALUE",
                    help="extra settings_pack entry (repeatable; int/true/false/str)")
    args = ap.parse_args()
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
