#!/usr/bin/env python3
"""Writes the hand-made seed corpora under fuzz/corpus/<target>/ (seed-*.bin files).

Run from anywhere: `python3 fuzz/make_seeds.py`. Deterministic; files that fuzzing added
(named by their SHA-1 by libFuzzer) are left alone.
"""
import hashlib
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def b(v):
    """Bencodes v (bytes/str/int/list/dict; dict keys sorted as bencode requires)."""
    if isinstance(v, bool):
        v = int(v)
    if isinstance(v, int):
        return b"i%de" % v
    if isinstance(v, str):
        v = v.encode()
    if isinstance(v, (bytes, bytearray)):
        return b"%d:" % len(v) + bytes(v)
    if isinstance(v, list):
        return b"l" + b"".join(b(x) for x in v) + b"e"
    if isinstance(v, dict):
        items = sorted(((k.encode() if isinstance(k, str) else k), x) for k, x in v.items())
        return b"d" + b"".join(b(k) + b(x) for k, x in items) + b"e"
    raise TypeError(v)


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name + ".bin"), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


ID_A = b"abcdefghij0123456789"
ID_M = b"mnopqrstuvwxyz123456"
IH = bytes.fromhex("e3811b9539cacff680e418124272177c47477157")
PEER = bytes([127, 0, 0, 1, 0x1A, 0xE1])
NODE = ID_M + bytes([10, 0, 0, 2, 0x1A, 0xE2])

# ---------------------------------------------------------------- KRPC (BEP 5 examples)
k = "krpc_decode"
write(k, "ping-q", b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe")
write(k, "ping-r", b"d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re")
write(k, "find_node-q", b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e1:q9:find_node1:t2:aa1:y1:qe")
write(k, "find_node-r", b(dict(t="aa", y="r", r=dict(id=ID_A, nodes=NODE * 3))))
write(k, "get_peers-q", b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz123456e1:q9:get_peers1:t2:aa1:y1:qe")
write(k, "get_peers-r-values", b"d1:rd2:id20:abcdefghij01234567895:token8:aoeusnth6:valuesl6:axje.u6:idhtnmee1:t2:aa1:y1:re")
write(k, "get_peers-r-nodes", b"d1:rd2:id20:abcdefghij01234567895:nodes9:def456...5:token8:aoeusnthe1:t2:aa1:y1:re")
write(k, "announce-q", b"d1:ad2:id20:abcdefghij012345678912:implied_porti1e9:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe1:q13:announce_peer1:t2:aa1:y1:qe")
write(k, "announce-q-port", b(dict(t="xy", y="q", q="announce_peer", a=dict(id=ID_A, info_hash=IH, port=6881, token="tok"))))
write(k, "announce-q-port0", b(dict(t="xy", y="q", q="announce_peer", a=dict(id=ID_A, info_hash=IH, port=0, token="tok"))))
write(k, "announce-q-port-big", b(dict(t="xy", y="q", q="announce_peer", a=dict(id=ID_A, info_hash=IH, port=70000, token="tok"))))
write(k, "announce-q-noport-implied", b(dict(t="xy", y="q", q="announce_peer", a=dict(id=ID_A, info_hash=IH, implied_port=1, token="tok"))))
write(k, "announce-r", b"d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re")
write(k, "error", b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee")
write(k, "error-neg", b"d1:eli-1e0:e1:t2:aa1:y1:ee")
write(k, "error-huge-code", b"d1:eli99999999999999999999e1:xe1:t2:aa1:y1:ee")
write(k, "error-short", b"d1:eli201ee1:t2:aa1:y1:ee")
write(k, "unknown-method", b(dict(t="zz", y="q", q="sample_infohashes", a=dict(id=ID_A, target=IH))))
write(k, "get-bep44", b(dict(t="zz", y="q", q="get", a=dict(id=ID_A, target=IH, seq=1))))
write(k, "resp-ip-v-ro", b(dict(t="aa", y="r", v="LT\x01\x02", ip=PEER, ro=1, r=dict(id=ID_A))))
write(k, "query-ro", b(dict(t="aa", y="q", q="ping", ro=1, a=dict(id=ID_A))))
write(k, "resp-ipv6-nodes6", b(dict(t="aa", y="r", r=dict(id=ID_A, nodes6=ID_M + bytes(18)))))
write(k, "resp-values-badlen", b(dict(t="aa", y="r", r=dict(id=ID_A, values=[PEER, b"12345", PEER + b"x"]))))
write(k, "resp-nodes-partial", b(dict(t="aa", y="r", r=dict(id=ID_A, nodes=NODE + b"abc"))))
write(k, "resp-empty-token", b(dict(t="", y="r", r=dict(id=ID_A, token=""))))
write(k, "short-id", b"d1:ad2:id19:abcdefghij012345678e1:q4:ping1:t2:aa1:y1:qe")
write(k, "no-tid", b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:y1:qe")
write(k, "bad-y", b"d1:t2:aa1:y1:xe")
write(k, "y-int", b"d1:t2:aa1:yi1ee")
write(k, "long-tid", b(dict(t="T" * 300, y="q", q="ping", a=dict(id=ID_A))))
write(k, "nested-deep", b"d1:a" + b"l" * 64 + b"e" * 64 + b"1:t2:aa1:y1:qe")
write(k, "unsorted-keys", b"d1:y1:q1:t2:aa1:q4:ping1:ad2:id20:abcdefghij0123456789ee")
write(k, "dup-keys", b"d1:t2:aa1:t2:bb1:y1:re")
write(k, "trailing", b"d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:reJUNK")
write(k, "truncated", b"d1:rd2:id20:mnopqrstuv")
write(k, "not-dict", b"li1ei2ee")
write(k, "empty", b"")
write(k, "int-leading-zero", b"d1:t2:aa1:y1:q1:q4:ping1:ad2:id20:abcdefghij01234567894:porti06881eee")
write(k, "neg-zero", b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:q2:roi-0ee")
write(k, "strlen-overflow", b"d1:t99999999999999999999:aa1:y1:qe")

# ---------------------------------------------------------------- metainfo
m = "metainfo_parse"


def pieces_of(data, plen):
    return b"".join(hashlib.sha1(data[i:i + plen]).digest() for i in range(0, len(data), plen)) if data else b""


data1 = bytes(range(256)) * 200  # 51200 bytes
info_single = dict(name="hello.bin", length=len(data1), **{"piece length": 16384, "pieces": pieces_of(data1, 16384)})
write(m, "single", b({"info": info_single, "creation date": 1700000000, "created by": "dhtnode/0.1.0",
                      "nodes": [["127.0.0.1", 6881], ["router.example", 6881]]}))
write(m, "single-info", b(info_single))
files = [(["a.txt"], 5), (["dir", "b.bin"], 40000), (["dir", "empty"], 0), (["dir", "sub", "c"], 17)]
total = sum(l for _, l in files)
blob = bytes((i * 7) & 0xFF for i in range(total))
info_multi = {"name": "multi", "piece length": 32768, "pieces": pieces_of(blob, 32768),
              "files": [{"length": l, "path": p} for p, l in files]}
write(m, "multi", b({"info": info_multi, "comment": "hand made", "announce": "udp://tracker.invalid:80"}))
write(m, "multi-info", b(info_multi))
write(m, "private", b({"info": dict(info_single, private=1)}))
write(m, "utf8-name", b({"info": dict(info_single, **{"name.utf-8": "h\u00e9llo \u2603"})}))
write(m, "latin1-name", b({"info": dict(info_single, name=b"caf\xe9")}))
write(m, "zero-length", b({"info": {"name": "z", "length": 0, "piece length": 16384, "pieces": b""}}))
write(m, "one-byte", b({"info": {"name": "o", "length": 1, "piece length": 1, "pieces": hashlib.sha1(b"x").digest()}}))
write(m, "piece-len-64MiB", b({"info": {"name": "o", "length": 1, "piece length": 64 << 20, "pieces": bytes(20)}}))
write(m, "piece-len-too-big", b({"info": {"name": "o", "length": 1, "piece length": (64 << 20) + 1, "pieces": bytes(20)}}))
write(m, "huge-length", b({"info": {"name": "o", "length": 2**63, "piece length": 16384, "pieces": bytes(20)}}))
write(m, "u64-max-length", b({"info": {"name": "o", "length": 2**64 - 1, "piece length": 1 << 26, "pieces": bytes(20)}}))
write(m, "sum-overflow", b({"info": {"name": "o", "piece length": 1 << 26, "pieces": bytes(20),
                                    "files": [{"length": 2**63, "path": ["a"]}, {"length": 2**63, "path": ["b"]}]}}))
write(m, "neg-length", b({"info": {"name": "o", "length": -1, "piece length": 16384, "pieces": b""}}))
write(m, "pieces-not-20", b({"info": {"name": "o", "length": 1, "piece length": 16384, "pieces": bytes(19)}}))
write(m, "path-traversal", b({"info": {"name": "t", "piece length": 16384, "pieces": bytes(20),
                                      "files": [{"length": 3, "path": ["..", "..", "etc", "passwd"]}]}}))
write(m, "path-abs", b({"info": {"name": "/etc", "length": 3, "piece length": 16384, "pieces": bytes(20)}}))
write(m, "path-empty-comp", b({"info": {"name": "t", "piece length": 16384, "pieces": bytes(20),
                                       "files": [{"length": 3, "path": ["", "x"]}]}}))
write(m, "path-nul-slash", b({"info": {"name": "t", "piece length": 16384, "pieces": bytes(20),
                                      "files": [{"length": 3, "path": ["a/b", "c\x00d", "CON", "x\\y"]}]}}))
write(m, "dup-path", b({"info": {"name": "t", "piece length": 16384, "pieces": bytes(20),
                                "files": [{"length": 1, "path": ["a"]}, {"length": 1, "path": ["a"]}]}}))
write(m, "file-and-dir", b({"info": {"name": "t", "piece length": 16384, "pieces": bytes(20),
                                    "files": [{"length": 1, "path": ["a"]}, {"length": 1, "path": ["a", "b"]}]}}))
write(m, "no-files", b({"info": {"name": "t", "piece length": 16384, "pieces": b"", "files": []}}))
write(m, "length-and-files", b({"info": dict(info_multi, length=3)}))
write(m, "v2-only", b({"info": {"name": "t", "piece length": 16384, "meta version": 2, "file tree": {}}}))
write(m, "many-empty-files", b({"info": {"name": "t", "piece length": 16384, "pieces": bytes(20),
                                        "files": [{"length": 0, "path": ["f%d" % i]} for i in range(60)] + [{"length": 1, "path": ["z"]}]}}))
write(m, "dup-info", b"d4:infod1:ai1ee4:infod1:bi1eee")
write(m, "info-not-dict", b"d4:infoi1ee")
write(m, "no-info", b"d8:announce3:urle")
write(m, "deep-nesting", b"d4:info" + b"l" * 200 + b"e" * 200 + b"e")
write(m, "trailing-garbage", b({"info": info_single}) + b"xyz")
write(m, "truncated", b({"info": info_single})[:-30])
write(m, "unsorted", b"d4:infod4:name1:a6:lengthi1e12:piece lengthi16384e6:pieces20:" + bytes(20) + b"ee")
write(m, "bad-nodes", b({"info": info_single, "nodes": [["", 1], ["h", 0], ["h", 70000], "x", ["h"], [" sp ", 5]]}))
write(m, "creation-date-huge", b({"info": info_single, "creation date": 2**64}))
write(m, "not-a-dict", b"l4:infoe")
write(m, "empty", b"")

# ---------------------------------------------------------------- magnet links / info-hash args
g = "magnet_parse"
H = IH.hex()
B32 = "4OARXFJZZLH7NAHEDAJEE4QXPRDUO4KX"
for name, s in [
    ("hex", "magnet:?xt=urn:btih:" + H),
    ("hex-upper", "MAGNET:?XT=URN:BTIH:" + H.upper()),
    ("base32", "magnet:?xt=urn:btih:" + B32),
    ("dn", "magnet:?xt=urn:btih:" + H + "&dn=My+File%20%C3%A9.iso"),
    ("peers", "magnet:?xt=urn:btih:" + H + "&x.pe=127.0.0.1:6881&x.pe=[::1]:51413&x.pe=host.example:80&x.pe=1.2.3.4:0"),
    ("trackers", "magnet:?xt=urn:btih:" + H + "&tr=udp%3A%2F%2Ftracker.invalid%3A80&ws=http://x/&xl=123"),
    ("v2-hybrid", "magnet:?xt=urn:btmh:1220" + "ab" * 32 + "&xt=urn:btih:" + H),
    ("two-xt", "magnet:?xt=urn:btih:" + H + "&xt=urn:btih:" + "00" * 20),
    ("bad-hash", "magnet:?xt=urn:btih:zzzz"),
    ("no-xt", "magnet:?dn=x"),
    ("empty-query", "magnet:?"),
    ("amp-only", "magnet:?&&&=&"),
    ("percent-bad", "magnet:?xt=urn:btih:" + H + "&dn=%zz%4%"),
    ("percent-nonutf8", "magnet:?xt=urn:btih:" + H + "&dn=%ff%fe%80"),
    ("percent-key", "magnet:?%78t=urn%3Abtih%3A" + H),
    ("spaces", "  magnet:?xt=urn:btih:" + H + "  \n"),
    ("hash-spaces", "magnet:?xt=urn:btih:%20" + H + "%20"),
    ("dn-empty", "magnet:?xt=urn:btih:" + H + "&dn=&dn=second"),
    ("dup-peers", "magnet:?xt=urn:btih:" + H + "&x.pe=1.2.3.4:5&x.pe=1.2.3.4:5"),
    ("peer-v6-zone", "magnet:?xt=urn:btih:" + H + "&x.pe=[fe80::1%25eth0]:6881"),
    ("bare-hex", H),
    ("bare-base32", B32.lower()),
    ("bare-39", H[:-1]),
    ("not-magnet", "http://example.invalid/?xt=urn:btih:" + H),
    ("magnet-no-q", "magnet:xt=urn:btih:" + H),
    ("unicode", "magnet:?xt=urn:btih:" + H + "&dn=\u2603\u00e9\U0001F600"),
    ("multibyte-prefix", "magn\u00e9t:?xt"),
    ("empty", ""),
    ("long-dn", "magnet:?xt=urn:btih:" + H + "&dn=" + "%41" * 500),
]:
    write(g, name, s)
write(g, "invalid-utf8", b"magnet:?xt=urn:btih:" + H.encode() + b"&dn=\xff\xfe")

# ---------------------------------------------------------------- peer wire
w = "wire_codec"


def frame(mid, payload=b""):
    return struct.pack(">I", 1 + len(payload)) + bytes([mid]) + payload


HS = bytes([19]) + b"BitTorrent protocol" + bytes([0, 0, 0, 0, 0, 0x10, 0, 0x05]) + IH + b"-DH0100-abcdefghijkl"
msgs = {
    "keepalive": b"\0\0\0\0",
    "choke": frame(0), "unchoke": frame(1), "interested": frame(2), "not-interested": frame(3),
    "have": frame(4, struct.pack(">I", 7)),
    "bitfield": frame(5, b"\xff\xfe"),
    "request": frame(6, struct.pack(">III", 1, 16384, 16384)),
    "piece": frame(7, struct.pack(">II", 1, 0) + b"DATA" * 8),
    "cancel": frame(8, struct.pack(">III", 1, 0, 16384)),
    "port": frame(9, struct.pack(">H", 6881)),
    "ext-hs": frame(20, b"\0" + b(dict(m=dict(ut_metadata=3, ut_pex=1), metadata_size=31235, p=6881, v="x"))),
    "ext-meta": frame(20, b"\3" + b(dict(msg_type=0, piece=0))),
    # BEP 6 fast extension
    "suggest": frame(0x0D, struct.pack(">I", 3)),
    "have-all": frame(0x0E),
    "have-none": frame(0x0F),
    "reject": frame(0x10, struct.pack(">III", 1, 16384, 16384)),
    "allowed-fast": frame(0x11, struct.pack(">I", 7)),
    "unknown-id": frame(0x15, b"\x01\x02\x03"),  # BEP 52 hash request: skipped, bounded
}
# Mode byte: bit 0 = known piece count (next 2 bytes), bit 1 = skip a leading handshake.
for name, f in msgs.items():
    write(w, name, b"\0" + f)
write(w, "stream", b"\0" + b"".join(msgs.values()))
write(w, "hs-stream", b"\2" + HS + msgs["ext-hs"] + msgs["bitfield"] + msgs["unchoke"] + msgs["piece"])
write(w, "hs-only", b"\2" + HS)
write(w, "hs-partial", b"\2" + HS[:30])
write(w, "hs-bad-proto", b"\2" + bytes([19]) + b"BitTorrent protocoX" + bytes(48))
write(w, "hs-len-18", b"\2" + bytes([18]) + HS[1:])
write(w, "known-pieces-bitfield", b"\1" + struct.pack(">H", 12) + frame(5, b"\xff\xf0"))
write(w, "known-pieces-spare-bits", b"\1" + struct.pack(">H", 12) + frame(5, b"\xff\xf1"))
write(w, "known-pieces-bad-bitfield-len", b"\1" + struct.pack(">H", 12) + frame(5, b"\xff"))
write(w, "known-pieces-have-oob", b"\1" + struct.pack(">H", 12) + frame(4, struct.pack(">I", 12)))
write(w, "known-pieces-zero", b"\1\0\0" + frame(5))
write(w, "known-pieces-max", b"\1\xff\xff" + frame(5, b"\xff" * 8191 + b"\x80"))
write(w, "request-overflow", b"\0" + frame(6, struct.pack(">III", 0, 0xFFFFFFF0, 16384)))
write(w, "request-zero", b"\0" + frame(6, struct.pack(">III", 0, 0, 0)))
write(w, "request-too-big", b"\0" + frame(6, struct.pack(">III", 0, 0, 16385)))
write(w, "piece-too-big", b"\0" + struct.pack(">I", 9 + 16385) + b"\7" + bytes(8))
write(w, "piece-empty", b"\0" + frame(7, bytes(8)))
write(w, "huge-prefix", b"\0\xff\xff\xff\xff")
write(w, "huge-prefix-ext", b"\0\x7f\xff\xff\xff\x14")
write(w, "bad-len-choke", b"\0" + struct.pack(">I", 2) + b"\0\0")
write(w, "truncated-piece", b"\0" + frame(7, struct.pack(">II", 0, 0) + bytes(100))[:50])
write(w, "partial-prefix", b"\0\0\0")
write(w, "ext-empty", b"\0" + struct.pack(">I", 1) + b"\x14")
write(w, "have-all-with-payload", b"\0" + frame(0x0E, b"\0"))
write(w, "have-none-with-payload", b"\0" + frame(0x0F, b"\0\0\0\0"))
write(w, "suggest-short", b"\0" + frame(0x0D, b"\0\0\3"))
write(w, "allowed-fast-long", b"\0" + frame(0x11, bytes(5)))
write(w, "reject-short", b"\0" + frame(0x10, struct.pack(">II", 1, 0)))
write(w, "reject-zero", b"\0" + frame(0x10, struct.pack(">III", 0, 0, 0)))
write(w, "reject-overflow", b"\0" + frame(0x10, struct.pack(">III", 0, 0xFFFFFFF0, 16384)))
write(w, "known-pieces-suggest-oob", b"\1" + struct.pack(">H", 12) + frame(0x0D, struct.pack(">I", 12)))
write(w, "known-pieces-allowed-fast-oob", b"\1" + struct.pack(">H", 12) + frame(0x11, struct.pack(">I", 0xFFFFFFFF)))
write(w, "known-pieces-fast-stream", b"\1" + struct.pack(">H", 12) + frame(0x0E) + frame(0x11, struct.pack(">I", 11))
      + frame(0x0D, struct.pack(">I", 0)) + frame(0x10, struct.pack(">III", 11, 0, 16384)))
write(w, "empty", b"")

# ---------------------------------------------------------------- BEP 10 handshake / BEP 9 messages
u = "ut_metadata"
write(u, "ext-hs", b(dict(m=dict(ut_metadata=3, ut_pex=1), metadata_size=31235, p=6881, v="\u00b5Torrent 1.2", reqq=250, yourip=bytes([1, 2, 3, 4]))))
write(u, "ext-hs-v6", b(dict(m=dict(ut_metadata=2), yourip=bytes(range(16)), ipv6=bytes(16))))
write(u, "ext-hs-disable", b(dict(m=dict(ut_metadata=0))))
write(u, "ext-hs-empty", b"de")
write(u, "ext-hs-neg-id", b"d1:md11:ut_metadatai-1eee")
write(u, "ext-hs-big-id", b(dict(m=dict(ut_metadata=256, x=2**40))))
write(u, "ext-hs-nonutf8-name", b"d1:md2:\xff\xfei1eee")
write(u, "ext-hs-size-max", b(dict(m=dict(ut_metadata=1), metadata_size=16 << 20)))
write(u, "ext-hs-size-over", b(dict(m=dict(ut_metadata=1), metadata_size=(16 << 20) + 1)))
write(u, "ext-hs-size-u64", b"d13:metadata_sizei18446744073709551615ee")
write(u, "ext-hs-size-overflow", b"d13:metadata_sizei99999999999999999999999ee")
write(u, "ext-hs-size-neg", b"d13:metadata_sizei-5ee")
write(u, "ext-hs-wrong-types", b(dict(m="x", p="6881", reqq=[1], v=5, yourip=7)))
write(u, "ext-hs-port0", b(dict(p=0, reqq=2**33)))
write(u, "ext-hs-deep", b"d1:x" + b"l" * 40 + b"e" * 40 + b"e")
write(u, "ext-hs-trailing", b(dict(m=dict(ut_metadata=3))) + b"trailing")
write(u, "meta-request", b(dict(msg_type=0, piece=0)))
write(u, "meta-reject", b(dict(msg_type=2, piece=5)))
write(u, "meta-data", b(dict(msg_type=1, piece=0, total_size=100)) + bytes(range(100)))
write(u, "meta-data-full", b(dict(msg_type=1, piece=1, total_size=40000)) + b"\xaa" * 16384)
write(u, "meta-data-over", b(dict(msg_type=1, piece=1, total_size=40000)) + b"\xaa" * 16385)
write(u, "meta-data-no-total", b(dict(msg_type=1, piece=0)) + b"xx")
write(u, "meta-unknown-type", b(dict(msg_type=7, piece=0)))
write(u, "meta-piece-u32", b(dict(msg_type=0, piece=2**32)))
write(u, "meta-piece-neg", b(dict(msg_type=0, piece=-1)))
write(u, "meta-no-piece", b(dict(msg_type=0)))
write(u, "meta-bad-dict", b"d8:msg_typei0e5:piecei0e")
write(u, "not-dict", b"i5e")
write(u, "empty", b"")

# ---------------------------------------------------------------- BEP 11 ut_pex payloads
x = "ut_pex"


def v4(a, b_, c, d, port):
    return bytes([a, b_, c, d]) + struct.pack(">H", port)


def v6(last, port):
    return bytes.fromhex("20010db8" + "00" * 10) + struct.pack(">H", last) + struct.pack(">H", port)


P4 = v4(10, 0, 0, 1, 6881) + v4(10, 0, 0, 2, 51413)
P6 = v6(1, 6881) + v6(2, 80)
write(x, "v4", b({"added": P4, "added.f": b"\x12\x00", "dropped": v4(10, 0, 0, 3, 1)}))
write(x, "v4-v6", b({"added": P4, "added.f": b"\x01\x1f", "added6": P6, "added6.f": b"\x04\x02",
                     "dropped": v4(10, 0, 0, 9, 9), "dropped6": v6(9, 9)}))
write(x, "all-keys-empty", b({"added": b"", "added.f": b"", "added6": b"", "added6.f": b"", "dropped": b"", "dropped6": b""}))
write(x, "no-flags", b({"added": P4}))
write(x, "short-flags", b({"added": P4 + v4(10, 0, 0, 4, 4), "added.f": b"\x02"}))
write(x, "long-flags", b({"added": P4, "added.f": b"\x02" * 40}))
write(x, "dropped-only", b({"dropped": P4, "dropped6": P6}))
write(x, "many", b({"added": b"".join(v4(10, 1, i // 256, i % 256, 1000 + i) for i in range(120)),
                    "added.f": bytes(i % 32 for i in range(120)),
                    "added6": b"".join(v6(i, 2000 + i) for i in range(70)),
                    "dropped": b"".join(v4(10, 2, 0, i, 7) for i in range(1, 80))}))
write(x, "useless-entries", b({"added": v4(10, 0, 0, 1, 0) + v4(0, 0, 0, 0, 80) + P4 + P4, "added.f": b"\x01\x02\x03\x04",
                               "added6": bytes(16) + b"\0\x50" + v6(1, 0), "dropped": v4(0, 0, 0, 0, 1) + v4(1, 2, 3, 4, 0)}))
write(x, "overlap", b({"added": P4, "dropped": P4}))
write(x, "bad-len-added", b({"added": P4[:-1]}))
write(x, "bad-len-dropped6", b({"dropped6": P6 + b"x"}))
write(x, "v6-in-v4-key", b({"added": P6}))
write(x, "wrong-types", b({"added": 5, "added.f": [1], "added6": {"x": 1}, "dropped": "", "dropped6": -1}))
write(x, "unknown-keys", b({"added": P4, "e": 1, "zz": [b"x", {"y": 2}], "added.f": b"\x10"}))
write(x, "trailing", b({"added": P4}) + b"trailing junk")
write(x, "deep", b"d1:x" + b"l" * 40 + b"e" * 40 + b"e")
write(x, "over-cap", b({"added": v4(1, 2, 3, 4, 5) * 2731}))
write(x, "truncated", b({"added": P4})[:-3])
write(x, "not-dict", b"l5:addede")
write(x, "empty-dict", b"de")
write(x, "empty", b"")

# ---------------------------------------------------------------- tracker answers
h = "tracker_http"
write(h, "opentracker", b({"complete": 1, "downloaded": 0, "incomplete": 1, "interval": 1683,
                           "min interval": 841, "peers": v4(127, 0, 0, 1, 5000) + v4(10, 0, 0, 2, 6881)}))
write(h, "dict-peers", b({"interval": 60, "peers": [{"ip": "127.0.0.5", "port": 7000},
                                                     {"ip": "example.com", "port": 1},
                                                     {"ip": "::1", "port": 0}, 5],
                          "peers6": v6(1, 7000), "warning message": "slow!", "tracker id": "abc"}))
write(h, "failure", b({"failure reason": "Requested download is not authorized for use with this tracker."}))
write(h, "failure-not-string", b({"failure reason": 5, "interval": 1}))
write(h, "html", b"<html><body>502 Bad Gateway</body></html>")
write(h, "newline", b({"interval": 60, "peers": b""}) + b"\n")
write(h, "huge", b({"interval": 60, "peers": b"".join(v4(10, i // 65536 % 256, i // 256 % 256, i % 256, 1) for i in range(1, 1600))}))
write(h, "negative", b({"interval": -5, "min interval": -1, "complete": -3, "peers": b"\x01"}))
write(h, "scrape", b({"files": {bytes(20): {"complete": 3, "downloaded": 9, "incomplete": 2}}}))
write(h, "deep", b"d5:peers" + b"l" * 60 + b"e" * 60 + b"e")
write(h, "empty", b"")

u = "tracker_udp"
write(u, "connect", struct.pack(">IIQ", 0, 7, 0x1122334455667788))
write(u, "announce", struct.pack(">IIIII", 1, 7, 1800, 2, 1) + v4(127, 0, 0, 9, 80) + v4(10, 0, 0, 1, 1))
write(u, "announce-v6", struct.pack(">IIIII", 1, 7, 1800, 2, 1) + v6(1, 80))
write(u, "scrape", struct.pack(">IIIII", 2, 7, 3, 9, 2))
write(u, "error", struct.pack(">II", 3, 7) + b"torrent not registered")
write(u, "short", struct.pack(">I", 1))
write(u, "bad-action", struct.pack(">II", 9, 7))
write(u, "empty", b"")

# ---------------------------------------------------------------- MetadataAssembler scripts
a = "metadata_assembler"
# Layout: a (size/16KiB units), u16 LE remainder, `size` bytes of truth, then ops (see checks.rs).
small = b"d4:name1:x6:lengthi1ee"
write(a, "one-piece-complete", bytes([0]) + struct.pack("<H", len(small)) + small + bytes([0, 0]))
write(a, "one-piece-junk", bytes([0]) + struct.pack("<H", 10) + b"0123456789" + bytes([2, 0, 0]) + struct.pack("<H", 10) + b"9876543210")
write(a, "two-pieces", bytes([1]) + struct.pack("<H", 100) + bytes(range(100)) + bytes([0x10, 0, 0x21, 1, 0x01, 1]))
write(a, "three-pieces-mixed", bytes([2, 5, 0]) + bytes(5) + bytes([3, 0x13, 4, 2, 5, 2, 6, 0, 0, 0x12, 1, 0, 0, 0, 1, 2]))
write(a, "wrong-total", bytes([0]) + struct.pack("<H", 4) + b"abcd" + bytes([2, 0, 1]) + struct.pack("<H", 5) + struct.pack("<H", 4) + b"abcd")
write(a, "out-of-range", bytes([0]) + struct.pack("<H", 4) + b"abcd" + bytes([2, 200, 0]) + struct.pack("<H", 4) + b"abcd")
hdr = b(dict(msg_type=1, piece=0, total_size=4))
write(a, "via-message", bytes([0]) + struct.pack("<H", 4) + b"abcd" + bytes([7]) + struct.pack("<H", len(hdr) + 4) + hdr + b"abcd")
write(a, "hash-mismatch-then-ok", bytes([1]) + struct.pack("<H", 3) + b"xyz"
      + bytes([0x30, 0, 2, 1, 0]) + struct.pack("<H", 3) + b"bad" + bytes([0x40, 0, 0x40, 1]))
write(a, "release-peer", bytes([1, 1, 0, 0x23, 0x23, 0x26, 0x33, 4, 9, 0x25, 0]))
write(a, "empty", b"")
print("seeds written under", os.path.join(HERE, "corpus"))
