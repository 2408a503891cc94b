"""DKIM signing throughput: dkimpy vs fastmta vs the raw OpenSSL operation, same run.

    PYTHONPATH=src python benchmarks/bench_dkim.py [--seconds 1.5] [--json]

Rates are signatures per second of *process CPU time* (``time.process_time``), i.e.
per core, so other load on the machine inflates them less than wall-clock rates would;
the wall-clock rate is printed beside them.  Cases, for RSA-2048 and Ed25519, with a
3 KB and a 100 KB campaign message (multipart text + HTML, indented HTML, relaxed/
relaxed, 11 signed header fields):

- ``openssl``: the private-key operation alone through ``cryptography`` (RSA PKCS#1
  v1.5 over SHA-256 of a typical 600-byte header block; Ed25519 over a 32-byte digest);
- ``dkimpy``: ``dkim.sign`` (reference implementation);
- ``fastmta``: ``Signer.sign(message)``: parse, canonicalise, hash body and headers,
  sign, fold;
- ``fastmta+bh``: ``Signer.sign(message, body_hash=bh)`` with the body hash computed
  once for all recipients (identical bodies).

Then the placement study (sign at injection vs at send time): spool bytes per
recipient and signing CPU per recipient for both choices.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time

import dkim as dkimpy
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from fastmta import dkim

SIGNED = [
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"mime-version",
    b"content-type",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"reply-to",
    b"feedback-id",
]


def campaign_message(size: int, rcpt: str = "jane.doe@example.net") -> bytes:
    """A multipart/alternative campaign message of about ``size`` bytes."""
    head = (
        "From: Example Shop <news@shop.example.com>\r\n"
        f"To: Jane Doe <{rcpt}>\r\n"
        "Subject: =?UTF-8?Q?Our_autumn_sale_=E2=80=93_up_to_50=25_off?=\r\n"
        "Date: Fri, 27 Nov 2026 09:00:00 +0000\r\n"
        "Message-ID: <20261127090000.123456@shop.example.com>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/alternative; boundary="b1_5f3a"\r\n'
        "List-Unsubscribe: <mailto:unsub-123456@shop.example.com>,\r\n"
        " <https://shop.example.com/u/123456>\r\n"
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        "Reply-To: service@shop.example.com\r\n"
        "Feedback-ID: 123456:autumn:shop:esp\r\n"
        "X-Campaign: autumn-2026\r\n"
        "\r\n"
    ).encode()
    text = "--b1_5f3a\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    html = "--b1_5f3a\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html>\r\n<body>\r\n"
    parts = [text]
    line_no = 0
    body_len = len(head) + len(text) + len(html)
    while body_len < size * 0.3:
        line = f"Dear customer, item {line_no} is now on sale at a great price.\r\n"
        parts.append(line)
        body_len += len(line)
        line_no += 1
    parts.append(html)
    while body_len < size - 40:
        line = (
            f'    <tr>\t<td class="item">  Item {line_no}  </td> '
            f'<td class="price">{line_no % 97},99 EUR</td>  </tr>\r\n'
        )
        parts.append(line)
        body_len += len(line)
        line_no += 1
    parts.append("</body>\r\n</html>\r\n--b1_5f3a--\r\n")
    return head + "".join(parts).encode()


def rate(fn, seconds: float, max_n: int = 1_000_000) -> tuple[float, float]:
    """(ops per CPU second, ops per wall second), bounded by time and count."""
    fn()  # warm up
    n = 0
    c0, w0 = time.process_time(), time.perf_counter()
    deadline = w0 + seconds
    while n < max_n:
        for _ in range(8):
            fn()
        n += 8
        if time.perf_counter() >= deadline:
            break
    c1, w1 = time.process_time(), time.perf_counter()
    return n / max(c1 - c0, 1e-9), n / max(w1 - w0, 1e-9)


def keys():
    rk = rsa.generate_private_key(65537, 2048)
    rpem = rk.private_bytes(
        ser.Encoding.PEM, ser.PrivateFormat.TraditionalOpenSSL, ser.NoEncryption()
    )
    ek = ed25519.Ed25519PrivateKey.generate()
    seed = ek.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption())
    epem = ek.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    return {
        "rsa-2048": ("rsa-sha256", rk, rpem, rpem),
        "ed25519": ("ed25519-sha256", ek, epem, base64.b64encode(seed)),
    }


def bench_signing(seconds: float) -> list[dict]:
    rows = []
    pkcs1, sha256 = padding.PKCS1v15(), hashes.SHA256()
    for kname, (alg, key, pem, dkimpy_key) in keys().items():
        if alg == "rsa-sha256":
            block = b"x" * 600

            def raw(key=key, block=block):
                key.sign(block, pkcs1, sha256)
        else:

            def raw(key=key):
                key.sign(b"d" * 32)

        raw_rate, raw_wall = rate(raw, seconds)
        signer = dkim.Signer("shop.example.com", "s1", pem, algorithm=alg)
        for size_name, size in (("3KB", 3 * 1024), ("100KB", 100 * 1024)):
            msg = campaign_message(size)
            body = msg[msg.index(b"\r\n\r\n") + 4 :]
            bh = dkim.body_hash(body)

            def py(msg=msg, alg=alg, k=dkimpy_key):
                dkimpy.sign(
                    msg,
                    b"s1",
                    b"shop.example.com",
                    k,
                    canonicalize=(b"relaxed", b"relaxed"),
                    signature_algorithm=alg.encode(),
                    include_headers=SIGNED,
                )

            py_rate, py_wall = rate(py, seconds, max_n=2000)
            fm_rate, fm_wall = rate(lambda msg=msg: signer.sign(msg), seconds)
            bh_rate, bh_wall = rate(lambda msg=msg, bh=bh: signer.sign(msg, body_hash=bh), seconds)
            rows.append(
                {
                    "key": kname,
                    "size": size_name,
                    "bytes": len(msg),
                    "openssl": raw_rate,
                    "dkimpy": py_rate,
                    "fastmta": fm_rate,
                    "fastmta_bh": bh_rate,
                    "fastmta_vs_openssl": fm_rate / raw_rate,
                    "fastmta_bh_vs_openssl": bh_rate / raw_rate,
                    "fastmta_vs_dkimpy": fm_rate / py_rate,
                    "wall": {"openssl": raw_wall, "dkimpy": py_wall, "fastmta": fm_wall,
                             "fastmta_bh": bh_wall},
                }
            )
    return rows


def bench_placement(seconds: float, recipients: int = 1000) -> list[dict]:
    """Sign at injection (spool signed copies) vs at send time (spool template+fields)."""
    _alg, _key, pem, _ = keys()["rsa-2048"]
    signer = dkim.Signer("shop.example.com", "s1", pem)
    out = []
    for size_name, size in (("3KB", 3 * 1024), ("100KB", 100 * 1024)):
        template = campaign_message(size, rcpt="{{email}}")
        body = template[template.index(b"\r\n\r\n") + 4 :]
        fields = [{"email": f"user{i}@example.net", "name": f"User {i}"} for i in range(recipients)]
        # At injection: one signed copy per recipient goes into the spool.
        rendered = [template.replace(b"{{email}}", f["email"].encode()) for f in fields[:50]]
        signed_bytes = sum(len(signer.sign(m)) + len(m) for m in rendered) / len(rendered)
        # At send time: the template once per delivery + small per-recipient fields.
        field_bytes = sum(len(json.dumps(f)) for f in fields) / recipients
        send_bytes = field_bytes + len(template) / recipients
        bh = dkim.body_hash(body)
        i = iter(range(10**9))

        def at_send():
            f = fields[next(i) % recipients]
            m = template.replace(b"{{email}}", f["email"].encode())
            signer.sign(m, body_hash=bh)

        def at_inject():
            f = fields[next(i) % recipients]
            m = template.replace(b"{{email}}", f["email"].encode())
            signer.sign(m)

        send_rate, _ = rate(at_send, seconds)
        inject_rate, _ = rate(at_inject, seconds)
        out.append(
            {
                "size": size_name,
                "spool_bytes_per_rcpt_inject": signed_bytes,
                "spool_bytes_per_rcpt_send": send_bytes,
                "spool_ratio": signed_bytes / send_bytes,
                "render_sign_per_s_at_send_shared_bh": send_rate,
                "render_sign_per_s_at_inject": inject_rate,
            }
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=1.5, help="time per case")
    ap.add_argument("--json", action="store_true", help="print JSON only")
    ap.add_argument("--no-placement", action="store_true", help="skip the placement study")
    args = ap.parse_args()
    info = {
        "impl": dkim.IMPL,
        "cpus": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0],
        "python": sys.version.split()[0],
    }
    rows = bench_signing(args.seconds)
    placement = [] if args.no_placement else bench_placement(args.seconds)
    if args.json:
        print(json.dumps({"info": info, "signing": rows, "placement": placement}, indent=1))
        return 0
    print(f"fastmta.dkim IMPL={info['impl']}  cpus={info['cpus']}  "
          f"load(1m)={info['loadavg_1m']:.2f}  (rates: signatures per CPU second)")
    hdr = (f"{'key':8} {'msg':6} {'openssl':>9} {'dkimpy':>8} {'fastmta':>9} {'fm+bh':>9}"
           f" {'fm/ossl':>8} {'fm+bh/ossl':>10} {'fm/dkimpy':>9}")
    print(hdr)
    for r in rows:
        print(
            f"{r['key']:8} {r['size']:6} {r['openssl']:9.0f} {r['dkimpy']:8.0f} "
            f"{r['fastmta']:9.0f} {r['fastmta_bh']:9.0f} {r['fastmta_vs_openssl']:8.0%} "
            f"{r['fastmta_bh_vs_openssl']:10.0%} {r['fastmta_vs_dkimpy']:8.1f}x"
        )
    if placement:
        print("\nplacement (RSA-2048, 1000 recipients, per recipient):")
        for p in placement:
            print(
                f"  {p['size']:6} spool bytes: inject {p['spool_bytes_per_rcpt_inject']:9.0f}"
                f"  send {p['spool_bytes_per_rcpt_send']:6.0f}  ({p['spool_ratio']:.0f}x)   "
                f"render+sign/s: at send (shared bh) "
                f"{p['render_sign_per_s_at_send_shared_bh']:6.0f}, at inject "
                f"{p['render_sign_per_s_at_inject']:6.0f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
